"""Tests of ``python -m train.sweep`` (grid × seeds through train.compare), with fake training."""

import json
import os
import types

import pytest

from asl_jax.training.statistics import mean_and_std
from train import sweep


def _fake_train(maps, failing=()):
    """A train_fn whose final mAP is ``maps[(gamma_neg, clip, seed)]``."""

    def train_fn(config, run_dir, **kwargs):
        key = (config.loss.gamma_neg, config.loss.clip, config.seed)
        if key in failing:
            raise RuntimeError("boom")
        value = maps[key]
        records = [{"kind": "train", "step": 10, "loss": 1.0, "delta_p": 0.1, "gamma_neg": 4.0}]
        records.append({"kind": "eval", "step": 10, "map": value, "map_ema": value - 0.01})
        final = {"map": value, "map_ema": value - 0.01, "cf1": 0.5, "of1": 0.6}
        summary = {
            "step": 10,
            "total_steps": 10,
            "final": final,
            "best_map": value,
            "best_map_step": 10,
            "best_map_ema": value - 0.01,
            "best_map_ema_step": 10,
            "final_gamma_neg": config.loss.gamma_neg,
            "final_delta_p": 0.1,
            "num_skipped": 0,
            "wall_time_s": 1.0,
        }
        return types.SimpleNamespace(
            summary=summary, records=records, interrupted=None, workdir=run_dir
        )

    return train_fn


def test_every_point_and_seed_trains_asl_and_is_summarised(comparison, tmp_path):
    grid = sweep.parse_grid(["loss.gamma_neg=2,4", "loss.clip=0,0.05"])
    maps = {
        (g, c, s): 0.5 + g / 100 + c + s / 1000 for g in (2, 4) for c in (0, 0.05) for s in (0, 1)
    }
    result = sweep.sweep(
        comparison.config(),
        tmp_path,
        grid,
        (0, 1),
        command="python -m train.sweep ...",
        train_fn=_fake_train(maps, failing={(4.0, 0.05, 1)}),
        handle_signals=False,
    )
    assert result["status"] == "failed"
    names = [p["dir"] for p in result["points"]]
    assert names == [
        "gamma_neg=2,clip=0",
        "gamma_neg=2,clip=0.05",
        "gamma_neg=4,clip=0",
        "gamma_neg=4,clip=0.05",
    ]
    first = result["points"][0]
    assert first["final_map"] == {
        "values": [maps[(2, 0, 0)], maps[(2, 0, 1)]],
        **mean_and_std([maps[(2, 0, 0)], maps[(2, 0, 1)]]),
    }
    last = result["points"][-1]
    assert last["seeds"] == [0] and last["failed"] == [1] and last["final_map"]["n"] == 1
    failed = json.load(open(tmp_path / "gamma_neg=4,clip=0.05" / "seed_1" / "compare.json"))
    assert failed["runs"][0]["error"] == "RuntimeError: boom"  # reported; the others ran
    assert json.load(open(tmp_path / "sweep.json"))["points"][-1]["failed"] == [1]
    md = open(tmp_path / "sweep.md").read()
    assert "| 4 | 0.05 | 0 (failed: 1) |" in md
    assert sorted(os.listdir(tmp_path / "plots")) == ["map_vs_clip.png", "map_vs_gamma_neg.png"]


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        (["loss.gama_neg=1,2"], "did you mean loss.gamma_neg"),
        (["loss.gamma_neg"], "expected KEY=V1,V2"),
        (["loss.gamma_neg=1,x"], "must be numbers"),
        (["loss.gamma_neg=1,1"], "distinct numbers"),
        (["loss.clip=0", "loss.clip=0.1"], "given twice"),
        ([], "at least one --grid"),
    ],
)
def test_bad_grid(specs, match):
    with pytest.raises(ValueError, match=match):
        sweep.parse_grid(specs)


def test_grid_keys_are_the_numeric_fields_asl_reads():
    assert sweep.GRID_KEYS == ("loss.clip", "loss.gamma_neg", "loss.gamma_pos")


def test_grid_keys_of_other_losses_come_from_the_registry():
    assert sweep.grid_keys("hill") == ("loss.focal_gamma", "loss.hill_lambda", "loss.margin")
    assert "loss.adaptive_step_size" in sweep.grid_keys("asl_adaptive")
    with pytest.raises(ValueError, match=r"keys of hill: loss.focal_gamma"):
        sweep.parse_grid(["loss.clip=0,0.1"], "hill")
    with pytest.raises(ValueError, match=r"--loss='nope': expected one of bce"):
        sweep.grid_keys("nope")


def test_a_sweep_of_another_loss_trains_that_loss(comparison, tmp_path):
    seen = []

    def train_fn(config, run_dir, **kwargs):
        seen.append((config.loss.name, config.loss.hill_lambda, os.path.relpath(run_dir, tmp_path)))
        maps = {(config.loss.gamma_neg, config.loss.clip, config.seed): 0.5}
        return _fake_train(maps)(config, run_dir, **kwargs)

    grid = sweep.parse_grid(["loss.hill_lambda=1,2"], "hill")
    result = sweep.sweep(comparison.config(), tmp_path, grid, (0,), loss="hill",
                         command="python -m train.sweep --loss=hill", train_fn=train_fn,
                         handle_signals=False)  # fmt: skip
    assert [s[:2] for s in seen] == [("hill", 1.0), ("hill", 2.0)]
    assert seen[0][2] == os.path.join("hill_lambda=1", "seed_0", "hill")
    assert result["loss"] == "hill" and open(tmp_path / "sweep.md").read().startswith("# Hill")


def test_cli_refuses_a_bad_grid_in_one_line(comparison):
    proc = comparison.cli("train.sweep", "--grid=loss.gama_neg=1,2", *comparison.flags[:1])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: --grid='loss.gama_neg=1,2': did you mean loss.gamma_neg? "
        "(keys of asl: loss.clip, loss.gamma_neg, loss.gamma_pos)"
    ]
