"""Tests of the checkpoints kept (latest + best) and of resuming past an unreadable checkpoint.

The runs use the tiny config of the loop tests (10 steps), so they share its compiled programs.
"""

import glob
import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest
from test_training_loop import tiny_config

from asl_jax.training import loop
from asl_jax.training.checkpoint import (
    Checkpointer,
    UnreadableCheckpointError,
    _ReadNoiseFilter,
    read_error,
)
from asl_jax.training.loop import TIMING_KEYS, train_and_evaluate
from asl_jax.training.state import checkpoint_items
from train.evaluate import evaluate_workdir
from train.reopen import RunError

# Validation mAPs scripted per evaluation step: the best regular mAP is tied at steps 4 and 6 (the
# tie goes to 6, between checkpoint steps), the best EMA mAP is at step 2; neither is the last.
SCRIPTED = {
    2: (0.3, 0.6),
    4: (0.5, 0.1),
    6: (0.5, 0.2),
    8: (0.2, 0.3),
    10: (0.1, 0.4),
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def _scripted(real):
    """The evaluation ``real``, with the mAPs of :data:`SCRIPTED`."""

    def evaluate(eval_fn, state, *args, **kwargs):
        scores = real(eval_fn, state, *args, **kwargs)
        scores["map"], scores["map_ema"] = SCRIPTED[int(state.step)]
        return scores

    return evaluate


@pytest.fixture
def scripted_evaluation(monkeypatch):
    monkeypatch.setattr(loop, "evaluate", _scripted(loop.evaluate))


def _best_config(cache_dir):
    config = tiny_config(cache_dir)
    config.eval_every = 2
    config.checkpoint_every = 4
    config.max_checkpoints_to_keep = 1
    return config


def _strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _assert_same_state(a, b):
    leaves = zip(
        jax.tree.leaves(jax.device_get(checkpoint_items(a))),
        jax.tree.leaves(jax.device_get(checkpoint_items(b))),
        strict=True,
    )
    for x, y in leaves:
        np.testing.assert_array_equal(x, y)


def _steps(workdir):
    return sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=lambda n: (len(n), n))


@pytest.fixture(scope="module")
def best_run(tmp_path_factory, cache_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "evaluate", _scripted(loop.evaluate))
        workdir = tmp_path_factory.mktemp("best")
        return train_and_evaluate(_best_config(cache_dir), workdir, handle_signals=False)


def test_the_latest_and_the_best_checkpoints_are_kept(best_run):
    summary = best_run.summary
    assert (summary["best_map_step"], summary["best_map_ema_step"]) == (6, 2)  # ties: later
    assert _steps(best_run.workdir) == ["2", "6", "10"]


@pytest.mark.parametrize(("ema", "step"), [(False, 6), (True, 2)])
def test_evaluate_best_restores_the_best_steps(best_run, ema, step):
    result = evaluate_workdir(best_run.workdir, best=True, ema=ema, output="")
    assert result["step"] == step and result["model"] == ("ema" if ema else "regular")


def test_the_latest_checkpoint_is_evaluated_by_default(best_run):
    assert evaluate_workdir(best_run.workdir, output="")["step"] == 10


def test_the_best_checkpoints_survive_an_interruption(
    best_run, cache_dir, tmp_path, scripted_evaluation
):
    config = _best_config(cache_dir)
    first = train_and_evaluate(config, tmp_path, stop_at_step=7, handle_signals=False)
    assert first.interrupted == 0 and _steps(tmp_path) == ["2", "6", "7"]
    second = train_and_evaluate(config, tmp_path, handle_signals=False)
    # The resumed run kept what the uninterrupted one kept, and ended in the same state.
    assert _steps(tmp_path) == _steps(best_run.workdir)
    _assert_same_state(second.state, best_run.state)
    assert _strip(second.records) == _strip(best_run.records)


def _damage(workdir, step):
    """Truncates the data files of a checkpoint, as a full disk or a storage fault leaves them."""
    files = glob.glob(
        os.path.join(workdir, "checkpoints", str(step), "**", "d", "*"), recursive=True
    )
    assert files
    for path in files:
        os.truncate(path, os.path.getsize(path) // 2)


def _damage_config(cache_dir):
    config = tiny_config(cache_dir)
    config.eval_every = 0  # only at the end: the checkpoints are those of steps 8 and 10
    return config


@pytest.fixture(scope="module")
def undamaged(tmp_path_factory, cache_dir):
    workdir = tmp_path_factory.mktemp("undamaged")
    return train_and_evaluate(_damage_config(cache_dir), workdir, handle_signals=False)


def test_an_unreadable_latest_checkpoint_costs_one_interval(undamaged, cache_dir, tmp_path, capfd):
    config = _damage_config(cache_dir)
    train_and_evaluate(config, tmp_path, handle_signals=False)
    assert _steps(tmp_path) == ["8", "10"]
    _damage(tmp_path, 10)
    capfd.readouterr()
    rerun = train_and_evaluate(config, tmp_path, handle_signals=False)
    err = capfd.readouterr().err
    moved = os.path.join(tmp_path, "checkpoints", "10.unreadable")
    warnings = [line for line in err.splitlines() if "cannot be read" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith("warning: the checkpoint of step 10 cannot be read (ValueError: ")
    assert f"moved it to {moved} and resuming" in warnings[0]
    assert "Traceback" not in err and "Resuming from step 8 " in err
    assert os.path.isdir(moved)
    assert _steps(tmp_path) == ["8", "10", "10.unreadable"]
    # The run ended as if nothing had happened: same state, same metrics.jsonl.
    _assert_same_state(rerun.state, undamaged.state)
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert _strip(records) == _strip(undamaged.records)


def test_no_readable_checkpoint_stops_the_run(cache_dir, tmp_path):
    config = _damage_config(cache_dir)
    train_and_evaluate(config, tmp_path, handle_signals=False)
    for step in (8, 10):
        _damage(tmp_path, step)
    metrics = open(tmp_path / "metrics.jsonl").read()
    with pytest.raises(UnreadableCheckpointError) as info:
        train_and_evaluate(config, tmp_path, handle_signals=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"no checkpoint in {tmp_path}/checkpoints can be read (step 10: ")
    assert "; step 8: ValueError: " in message
    assert message.endswith(
        f"Nothing was moved or deleted; to start over, use a new workdir or move "
        f"{tmp_path}/checkpoints away."
    )
    # Nothing was renamed, and the results were not touched.
    assert _steps(tmp_path) == ["8", "10"]
    assert open(tmp_path / "metrics.jsonl").read() == metrics


def test_evaluate_names_an_unreadable_checkpoint(undamaged, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(undamaged.workdir, workdir)
    _damage(workdir, 10)
    with pytest.raises(RunError) as info:
        evaluate_workdir(workdir, output="")
    message = str(info.value)
    assert "\n" not in message and "give --step with one of 8" in message
    assert message.startswith(
        f"the checkpoint of step 10 ({workdir}/checkpoints/10) cannot be read"
    )
    assert evaluate_workdir(workdir, step=8, output="")["step"] == 8


def _kept(directory):
    ckpt = Checkpointer(directory)
    try:
        return sorted(ckpt.all_steps())
    finally:
        ckpt.close()


def test_checkpointer_ranks_metrics_after_a_restart(undamaged, tmp_path):
    def save(ckpt, step, metrics):
        state = undamaged.state
        ckpt.save(state.replace(step=state.step * 0 + step), metrics=metrics)
        ckpt.wait()

    ckpt = Checkpointer(tmp_path, max_to_keep=1)
    save(ckpt, 1, {"map": 0.4, "map_ema": float("nan")})  # a NaN ranks last
    save(ckpt, 2, {"map": 0.2, "map_ema": 0.1})
    save(ckpt, 3, None)
    ckpt.close()
    assert _kept(tmp_path) == [1, 2, 3]
    ckpt = Checkpointer(tmp_path, max_to_keep=1)  # the metrics were stored with the checkpoints
    save(ckpt, 4, {"map": 0.3, "map_ema": 0.1})  # ties the best EMA mAP: the later is kept
    save(ckpt, 5, {})
    ckpt.close()
    assert _kept(tmp_path) == [1, 4, 5]


def test_read_error_is_one_short_line():
    spec = "[tensorstore_spec='{}'] [tensorstore_spec[1]='{}']"
    error = ValueError(f"OUT_OF_RANGE: Error reading\n{'x' * 500} end\n{spec}")
    text = read_error(error, limit=100)
    assert "\n" not in text and "tensorstore_spec" not in text and len(text) <= 103
    assert text.startswith("ValueError: OUT_OF_RANGE") and text.endswith("x end")


@pytest.mark.parametrize(
    "message, error, dropped",
    [
        ("Future exception was never retrieved", ValueError("x [tensorstore_spec='{}']"), True),
        ("Task exception was never retrieved", ValueError("x [tensorstore_spec='{}']"), True),
        ("Task exception was never retrieved", RuntimeError("Event loop is closed"), True),
        ("Task exception was never retrieved", ValueError("a real bug"), False),
        ("Unclosed client session", ValueError("x [tensorstore_spec='{}']"), False),
    ],
)
def test_only_the_reports_of_abandoned_reads_are_dropped(message, error, dropped):
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, None)
    record.exc_info = (type(error), error, None)
    assert _ReadNoiseFilter().filter(record) is not dropped


@pytest.mark.parametrize("async_save", [False, True])
def test_a_save_is_complete_once_waited_for(undamaged, tmp_path, async_save):
    ckpt = Checkpointer(tmp_path, async_save=async_save)
    try:
        ckpt.save(undamaged.state)
        if not async_save:  # a synchronous save is on disk when save returns
            assert not ckpt.is_saving() and ckpt.latest_step() == 10
        ckpt.wait()
        assert not ckpt.is_saving() and ckpt.all_steps() == [10]
        assert sorted(os.listdir(tmp_path)) == ["10"]  # no temporary directory left
        _assert_same_state(ckpt.restore(undamaged.state), undamaged.state)
    finally:
        ckpt.close()


def test_a_synchronous_run_ends_like_an_asynchronous_one(undamaged, cache_dir, tmp_path):
    config = _damage_config(cache_dir)
    config.async_checkpoints = False
    run = train_and_evaluate(config, tmp_path, handle_signals=False)
    assert _steps(tmp_path) == _steps(undamaged.workdir) == ["8", "10"]
    _assert_same_state(run.state, undamaged.state)


def test_a_workdir_from_before_async_checkpoints_opens(undamaged, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(undamaged.workdir, workdir)
    config = json.loads((workdir / "config.json").read_text())
    del config["async_checkpoints"]
    (workdir / "config.json").write_text(json.dumps(config))
    assert evaluate_workdir(workdir, output="")["step"] == 10
