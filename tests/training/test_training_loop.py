"""Tests of asl_jax.training.loop: workdir files, resume == uninterrupted, refusals, non-finite.

Every run uses the same tiny config (shapes at 16 px, 64 training images, a 4-channel CNN, 10
steps on the 8 simulated devices), so the programs are compiled once for the whole module.
"""

import dataclasses
import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest

from asl_jax.config_fields import Effect
from asl_jax.data import create_source
from asl_jax.training.checkpoint import Checkpointer
from asl_jax.training.config import Config, program_key
from asl_jax.training.loop import TIMING_KEYS, NonFiniteError, itstime, train_and_evaluate
from asl_jax.training.state import checkpoint_items
from asl_jax.training.workdir import WorkdirConfigError
from train.configs.default import get_config

OVERRIDES = {
    "model.width": 4,
    "data.image_size": 16,
    "data.num_train": 64,
    "data.num_val": 32,
    "batch_size": 16,
    "num_steps": 10,
    "learning_rate": 0.01,
    "loss.adaptive": True,
    "log_every": 1,
    "eval_every": 5,
    "checkpoint_every": 4,
    "progress_bar": False,
}


def tiny_config(cache_dir):
    config = get_config()
    for dotted, value in {**OVERRIDES, "data.cache_dir": str(cache_dir)}.items():
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
    workdir = tmp_path_factory.mktemp("reference")
    config = tiny_config(cache_dir)
    config.profile_steps = 2  # operational: the resumed runs compared with it do not profile
    return train_and_evaluate(config, workdir, handle_signals=False)


def _strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_workdir_files(reference):
    workdir = reference.workdir
    assert reference.interrupted is None
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["loss"]["name"] == "asl" and config["num_steps"] == 10
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, 11))
    for key in ("loss", "gamma_neg", "delta_p", "pos_mean", "neg_mean", "lr", "grad_norm"):
        assert all(isinstance(r[key], float) for r in train), key
    # Speed from the second fetch of a session on (the first one includes compilation).
    assert train[0]["images_per_s"] is None
    for r in train[1:]:
        assert r["images_per_s"] == pytest.approx(r["steps_per_s"] * config["batch_size"])
        assert r["eta_s"] == pytest.approx((10 - r["step"]) / r["steps_per_s"])
    assert [r["step"] for r in evals] == [5, 10]
    for key in ("map", "map_ema", "cf1", "of1", "cf1_ema", "of1_ema"):
        assert all(0.0 <= r[key] <= 1.0 for r in evals), key
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["status"] == "completed" and summary["step"] == 10
    assert summary["final"]["map"] == evals[-1]["map"]
    assert summary["best_map"] == max(r["map"] for r in evals)
    # The final γ− is the state's, after the adaptive rule's update by the last step's Δp.
    assert summary["final_gamma_neg"] == pytest.approx(float(reference.state.gamma_neg))
    last = train[-1]
    step_size, target = config["loss"]["adaptive_step_size"], config["loss"]["delta_p_target"]
    expected = last["gamma_neg"] + step_size * (last["delta_p"] - target)
    assert summary["final_gamma_neg"] == pytest.approx(expected, abs=1e-6)
    assert summary["config_name"] == "default" and summary["wall_time_s"] > 0
    # profile_steps=2: a trace of steps 2 and 3 (after the compiling first step).
    assert glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
    # TensorBoard shows the same evaluations (the event files are read in test_training_records).
    assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    # The 2 latest checkpoints, and those of the best evaluations (the first one, at step 5, is
    # a best and was checkpointed although 5 is no checkpoint step).
    best = {summary["best_map_step"], summary["best_map_ema_step"]}
    kept = {int(name) for name in os.listdir(os.path.join(workdir, "checkpoints"))}
    assert kept == {8, 10} | best
    plots = sorted(os.listdir(os.path.join(workdir, "plots")))
    assert plots == ["gamma_delta_p.png", "loss.png", "map.png", "probabilities.png"]
    # The adaptive γ− moved during the run and is what the state carries.
    assert train[-1]["gamma_neg"] != train[0]["gamma_neg"]
    assert float(reference.state.gamma_neg) != pytest.approx(train[0]["gamma_neg"])


def test_resume_after_a_kill_equals_the_uninterrupted_run(reference, cache_dir, tmp_path):
    config = tiny_config(cache_dir)
    first = train_and_evaluate(config, tmp_path, stop_at_step=6, handle_signals=False)
    assert first.interrupted == 0 and first.summary["status"] == "interrupted"
    # Step 5's evaluation, the first, is the best so far: checkpointed (and kept, so 4 is not).
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["5", "6"]
    # A kill between the checkpoint of step 5 and the next one: the records of step 6 were
    # written but its checkpoint was not.
    shutil.rmtree(tmp_path / "checkpoints" / "6")
    second = train_and_evaluate(config, tmp_path, handle_signals=False)
    assert second.interrupted is None and int(second.state.step) == 10
    final = jax.device_get(checkpoint_items(second.state))
    expected = jax.device_get(checkpoint_items(reference.state))
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)
    # The metrics file describes one run: the records of the lost steps were replaced.
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert _strip(records) == _strip(reference.records)
    assert second.summary["final"]["map"] == reference.summary["final"]["map"]


def test_checkpoint_round_trip(reference, tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(reference.state)
    ckpt.wait()
    assert ckpt.latest_step() == 10
    restored = ckpt.restore(reference.state)
    ckpt.close()
    items, expected = checkpoint_items(restored), checkpoint_items(reference.state)
    assert jax.tree.structure(items) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(items), jax.tree.leaves(expected), strict=True):
        assert a.sharding == b.sharding and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_rerunning_a_finished_run_trains_nothing(reference, cache_dir):
    again = train_and_evaluate(tiny_config(cache_dir), reference.workdir, handle_signals=False)
    assert int(again.state.step) == 10
    assert _strip(again.records) == _strip(reference.records)


def test_a_workdir_with_another_config_is_refused(reference, cache_dir):
    config = tiny_config(cache_dir)
    config.loss.gamma_neg = 2.0
    with pytest.raises(WorkdirConfigError, match=r"loss\.gamma_neg: 4\.0 -> 2\.0"):
        train_and_evaluate(config, reference.workdir, handle_signals=False)
    config = tiny_config(cache_dir)
    config.log_every = 3  # operational fields may change
    train_and_evaluate(config, reference.workdir, handle_signals=False)


class _CorruptAfter:
    """A data source whose training labels become NaN from the given step on."""

    def __init__(self, source, first_bad_step):
        self._source = source
        self._first_bad = first_bad_step
        for name in ("name", "num_classes", "class_names", "image_size"):
            setattr(self, name, getattr(source, name))

    def num_examples(self, split):
        return self._source.num_examples(split)

    def batches(self, request):
        epoch_steps = self.num_examples("train") // request.batch_size
        step = request.epoch * epoch_steps + request.start_batch
        for batch in self._source.batches(request):
            if request.split == "train" and step >= self._first_bad:
                batch = dict(batch, labels=np.full_like(batch["labels"], np.nan))
            step += 1
            yield batch


def test_consecutive_nonfinite_steps_stop_the_run(cache_dir, tmp_path):
    config = tiny_config(cache_dir)
    config.max_consecutive_nonfinite = 3
    source = _CorruptAfter(create_source(config.data, seed=0), first_bad_step=2)
    with pytest.raises(NonFiniteError) as info:
        train_and_evaluate(config, tmp_path, source=source, handle_signals=False)
    message = str(info.value)
    assert "training stopped at step 5: 3 consecutive steps had a non-finite loss" in message
    assert f"{tmp_path}/checkpoints/4 (step 4)" in message
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["skipped"] for r in records if r["kind"] == "train"] == [0, 0, 1, 1, 1]
    assert records[-1]["num_skipped"] == 3


FIELDS = dict(Config.walk())
PROGRAM_FIELDS = sorted(n for n, f in FIELDS.items() if f.metadata["effect"] is Effect.PROGRAM)


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    return f"{value}-changed"


def _with(config, dotted, value):
    """``config`` with one field replaced (the program key does not check the value)."""
    block, _, leaf = dotted.rpartition(".")
    if not block:
        return dataclasses.replace(config, **{leaf: value})
    return dataclasses.replace(
        config, **{block: dataclasses.replace(getattr(config, block), **{leaf: value})}
    )


def test_program_fields_are_most_fields():
    assert len(PROGRAM_FIELDS) > 20


@pytest.mark.parametrize("dotted", sorted(FIELDS))
def test_the_program_key_changes_exactly_with_the_program_fields(dotted, monkeypatch):
    # Checks are bypassed: the key must follow every value, valid or not.
    monkeypatch.setattr(Config, "__post_init__", lambda self: None)
    for block in ("loss", "model", "data", "augment"):
        block_type = type(getattr(Config(), block))
        monkeypatch.setattr(block_type, "__post_init__", lambda self: None)
    config = Config()
    value = config.flat()[dotted]
    changed = program_key(_with(config, dotted, _changed(value))) != program_key(config)
    assert changed == (dotted in PROGRAM_FIELDS)


@pytest.mark.parametrize(
    ("step", "every", "total", "expected"),
    [(4, 4, 10, True), (5, 4, 10, False), (10, 4, 10, True), (3, 0, 10, False), (10, 0, 10, True)],
)
def test_itstime(step, every, total, expected):
    assert itstime(step, every, total) is expected
