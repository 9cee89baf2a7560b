"""Tests of ``python -m train.compare``: results files, failure isolation, reuse, interruption."""

import json
import os
import shutil
import signal
import types

import pytest

from train import compare


def test_cli_writes_the_results_and_isolates_a_failed_run(comparison):
    proc, workdir = comparison.proc, comparison.workdir
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 run(s) failed: asl_adaptive" in proc.stderr
    # The table and where the results are, on stdout.
    assert "| BCE |" in proc.stdout and "| ASL + adaptive γ− |" in proc.stdout
    assert f"Results in {workdir}: compare.json, compare.md" in proc.stdout

    result = json.load(open(os.path.join(workdir, "compare.json")))
    assert result["status"] == "failed" and result["losses"] == ["bce", "asl_adaptive"]
    bce, adaptive = result["runs"]
    assert bce["loss"] == "bce" and bce["status"] == "completed"
    assert bce["step"] == bce["total_steps"] == 8 and bce["resumed_from"] is None
    for key in ("best_map", "best_map_ema", "final_map", "final_map_ema", "final_cf1", "final_of1"):
        assert 0.0 <= bce[key] <= 1.0, key
    assert bce["best_map"] >= bce["final_map"] and bce["best_map_step"] in (4, 8)
    assert bce["final_gamma_neg"] == 0.0  # the γ− BCE applies
    assert -1.0 <= bce["delta_p_end"] <= 1.0 and bce["wall_time_s"] > 0
    summary = json.load(open(os.path.join(workdir, "bce", "summary.json")))
    assert bce["final_map"] == summary["final"]["map"]
    assert bce["best_map_ema"] == summary["best_map_ema"]

    assert adaptive["status"] == "failed"
    assert adaptive["error"].startswith("ConfigError: loss.gamma_neg=4.0")
    assert "loss_registry.py" in adaptive["traceback"]  # the end: where the loss block is checked
    assert len(adaptive["traceback"].splitlines()) <= compare.TRACEBACK_LINES

    md = open(os.path.join(workdir, "compare.md")).read()
    assert "--losses=bce,asl_adaptive" in md and "--config.loss.adaptive_max_gamma_neg=1.0" in md
    assert md.startswith("# Loss comparison\n\n```\npython -m train.compare ")
    bce_row = next(line for line in md.splitlines() if line.startswith("| BCE |"))
    assert f"| {100 * bce['final_map']:.2f} |" in bce_row and bce_row.endswith("| completed |")
    assert "Failed runs:" in md and "ConfigError: loss.gamma_neg=4.0" in md
    # The adaptive run failed: no γ− plot.
    assert sorted(os.listdir(os.path.join(workdir, "plots"))) == ["delta_p.png", "map.png"]
    config = json.load(open(os.path.join(workdir, "bce", "config.json")))
    assert config["loss"]["name"] == "bce" and config["data"]["num_train"] == 256
    assert bce["batch_size"] == config["batch_size"] and adaptive.get("batch_size") is None


def test_rerun_reuses_the_finished_run_and_reports_a_run_that_raises(comparison, tmp_path):
    workdir = str(tmp_path / "runs")
    shutil.copytree(comparison.workdir, workdir)
    metrics = open(os.path.join(workdir, "bce", "metrics.jsonl")).read()
    calls = []

    def train_fn(config, run_dir, **kwargs):
        from asl_jax.training import train_and_evaluate

        calls.append(config.loss.name)
        if config.loss.name == "focal":
            raise RuntimeError("boom")
        return train_and_evaluate(config, run_dir, **kwargs)

    # Without the failing override: loss.adaptive_max_gamma_neg is not a BCE setting, so the
    # finished BCE run is reused rather than refused.
    result = compare.compare(
        comparison.config(),
        workdir,
        ("focal", "bce"),
        command="python -m train.compare ...",
        train_fn=train_fn,
        handle_signals=False,
    )
    assert calls == ["focal", "bce"]
    assert result["status"] == "failed"
    focal, bce = result["runs"]
    assert focal["status"] == "failed" and focal["error"] == "RuntimeError: boom"
    assert "train_fn" in focal["traceback"] and "boom" in focal["traceback"]
    first = json.load(open(os.path.join(comparison.workdir, "compare.json")))["runs"][0]
    assert bce["status"] == "completed" and bce["resumed_from"] == 8
    for key in ("final_map", "best_map", "final_map_ema", "final_cf1", "delta_p_end"):
        assert bce[key] == first[key], key
    assert open(os.path.join(workdir, "bce", "metrics.jsonl")).read() == metrics  # not retrained
    md = open(os.path.join(workdir, "compare.md")).read()
    assert "- focal: `RuntimeError: boom`" in md


def _fake_result(workdir, *, interrupted, step):
    records = [
        {"kind": "train", "step": s, "loss": 1.0, "delta_p": 0.1 * s, "gamma_neg": 4.0}
        for s in range(1, step + 1)
    ] + [{"kind": "eval", "step": step, "map": 0.5, "map_ema": 0.4}]
    summary = {
        "step": step,
        "total_steps": 10,
        "final": {"map": 0.5, "map_ema": 0.4, "cf1": 0.3, "of1": 0.2},
        "best_map": 0.5,
        "best_map_step": step,
        "best_map_ema": 0.4,
        "best_map_ema_step": step,
        "final_gamma_neg": 4.0,
        "final_delta_p": 0.1,
        "num_skipped": 0,
        "wall_time_s": 1.0,
    }
    return types.SimpleNamespace(
        summary=summary, records=records, interrupted=interrupted, workdir=workdir
    )


def test_an_interrupted_run_stops_the_comparison(comparison, tmp_path):
    def train_fn(config, run_dir, **kwargs):
        stop = config.loss.name == "asl"
        return _fake_result(run_dir, interrupted=int(signal.SIGTERM) if stop else None, step=10)

    result = compare.compare(
        comparison.config(),
        tmp_path,
        ("bce", "asl", "asl_adaptive"),
        command="cmd",
        source=object(),
        train_fn=train_fn,
    )
    assert result["status"] == "interrupted" and result["signal"] == signal.SIGTERM
    assert [r["status"] for r in result["runs"]] == ["completed", "interrupted", "not run"]
    # Δp end: the mean over the train records of the last 10% of the steps (step 9 and 10).
    assert result["runs"][0]["delta_p_end"] == pytest.approx(0.95)
    md = open(tmp_path / "compare.md").read()
    assert "| interrupted at step 10 |" in md and "| not run |" in md


def test_loss_configs_and_the_losses_flag(comparison):
    base = comparison.config()
    expected = {
        "bce": ("bce", False),
        "focal": ("focal", False),
        "asl": ("asl", False),
        "asl_adaptive": ("asl", True),
    }
    assert compare.DEFAULT_LOSSES == tuple(expected)
    for loss, (name, adaptive) in expected.items():
        config = compare.loss_config(base, loss)
        assert (config.loss.name, config.loss.adaptive) == (name, adaptive)
        assert config.data.num_train == 256 and config.name == f"default:{loss}"
    assert compare.describe_loss(compare.loss_config(base, "focal")) == "γ=2"
    assert compare.parse_losses(" asl, bce ") == ("asl", "bce")
    for bad, message in (("asl,nope", "unknown: nope"), ("bce,bce", "twice"), ("", "expected")):
        with pytest.raises(ValueError, match=message):
            compare.parse_losses(bad)


@pytest.mark.parametrize(("num_evals", "kind"), [(1, "bar"), (8, "line")])
def test_compare_plots_draw_a_single_evaluation_as_bars(tmp_path, monkeypatch, num_evals, kind):
    from asl_jax.training import plots

    kinds = {}
    real_draw = plots.draw

    def recording_draw(ax, series, **kwargs):
        kinds[ax.get_figure()] = real_draw(ax, series, **kwargs)
        return kinds[ax.get_figure()]

    monkeypatch.setattr(plots, "draw", recording_draw)
    runs = [{"loss": loss, "label": loss.upper()} for loss in ("bce", "asl_adaptive")]
    records = {
        r["loss"]: [
            {"kind": "eval", "step": 10 * (i + 1), "map": 0.5 + i / 100, "map_ema": 0.4}
            for i in range(num_evals)
        ]
        + [
            {"kind": "train", "step": 10 * (i + 1), "delta_p": 0.1, "gamma_neg": 4.0}
            for i in range(num_evals)
        ]
        for r in runs
    }
    written = compare.plot_compare(runs, records, tmp_path)
    assert sorted(os.path.basename(p) for p in written) == [
        "delta_p.png",
        "gamma_neg.png",
        "map.png",
    ]
    assert list(kinds.values()) == [kind] * 3
    assert all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in written)


def test_seeds_run_one_comparison_per_seed_and_test_against_bce(comparison, tmp_path):
    from asl_jax.training.statistics import mean_and_std, paired_difference

    maps = {("bce", 0): 0.60, ("bce", 1): 0.64, ("bce", 2): 0.59}
    maps.update({("asl", 0): 0.70, ("asl", 1): 0.71, ("asl", 2): 0.72})
    seen = []

    def train_fn(config, run_dir, **kwargs):
        seen.append((config.loss.name, config.seed, os.path.relpath(run_dir, tmp_path)))
        result = _fake_result(run_dir, interrupted=None, step=10)
        result.summary["final"]["map"] = maps[(config.loss.name, config.seed)]
        return result

    summary = compare.compare_seeds(
        comparison.config(),
        tmp_path,
        ("bce", "asl"),
        (0, 1, 2),
        command="python -m train.compare --seeds=0,1,2",
        train_fn=train_fn,
        handle_signals=False,
    )
    assert seen == [(loss, s, f"seed_{s}/{loss}") for s in (0, 1, 2) for loss in ("bce", "asl")]
    assert summary["status"] == "completed" and summary["seeds"] == [0, 1, 2]
    bce, asl = summary["losses"]
    asl_maps, bce_maps = (
        [maps[("asl", s)] for s in (0, 1, 2)],
        [maps[("bce", s)] for s in (0, 1, 2)],
    )
    assert asl["final_map"] == {"values": asl_maps, **mean_and_std(asl_maps)}
    assert asl["vs_baseline"]["final_map"] == paired_difference(asl_maps, bce_maps)
    assert bce["vs_baseline"] is None and bce["seeds"] == [0, 1, 2]
    assert json.load(open(tmp_path / "seeds.json")) == json.loads(json.dumps(summary))
    md = open(tmp_path / "seeds.md").read()
    assert "| ASL | 0,1,2 | 71.00 ± 1.00 |" in md and "(p = " in md
    assert os.path.isfile(tmp_path / "seed_2" / "compare.json")


def test_seeds_stop_at_an_interrupted_comparison(comparison, tmp_path):
    def train_fn(config, run_dir, **kwargs):
        stopped = config.seed == 1
        return _fake_result(run_dir, interrupted=15 if stopped else None, step=5 if stopped else 10)

    summary = compare.compare_seeds(
        comparison.config(), tmp_path, ("bce",), (0, 1, 2), train_fn=train_fn, handle_signals=False
    )
    assert summary["status"] == "interrupted" and summary["signal"] == 15
    assert sorted(summary["comparisons"]) == ["0", "1"]  # seed 2 not started
    assert summary["losses"][0]["seeds"] == [0]


def test_seeds_compared_with_another_baseline(comparison, tmp_path):
    maps = {("bce", 0): 0.6, ("bce", 1): 0.5, ("asl", 0): 0.9, ("asl", 1): 0.7}

    def train_fn(config, run_dir, **kwargs):
        result = _fake_result(run_dir, interrupted=None, step=10)
        result.summary["final"]["map"] = maps[(config.loss.name, config.seed)]
        return result

    summary = compare.compare_seeds(
        comparison.config(), tmp_path, ("bce", "asl"), (0, 1), baseline="asl",
        train_fn=train_fn, handle_signals=False,
    )  # fmt: skip
    bce, asl = summary["losses"]
    assert summary["baseline"] == "asl" and asl["vs_baseline"] is None
    assert bce["vs_baseline"]["final_map"]["mean"] == pytest.approx(-0.25)
    assert "mAP − ASL mAP" in open(tmp_path / "seeds.md").read()
    assert compare.parse_baseline("asl", ("bce", "asl")) == "asl"
    with pytest.raises(ValueError, match=r"--baseline='hill': expected one of the runs"):
        compare.parse_baseline("hill", ("bce", "asl"))


@pytest.mark.parametrize("text", ["0,x", "1,1", "-1", ","])
def test_bad_seeds(text):
    with pytest.raises(ValueError, match="--seeds="):
        compare.parse_seeds(text)


@pytest.mark.parametrize(
    "used, expected",
    [
        ([64, None], "of batch 64,"),
        ([48, 48], "of batch 48 (the config's 64 did not fit the train split),"),
        ([None], "of batch 64,"),
    ],
)
def test_setup_line_states_the_batch_size_the_runs_used(used, expected):
    from train.configs.default import get_config

    config = get_config().to_dict()
    config["batch_size"] = 64
    runs = [{"batch_size": b} for b in used]
    assert expected in compare._setup_line(config, runs)


def test_a_rerun_with_another_setting_is_one_line_and_keeps_the_earlier_results(
    comparison, tmp_path
):
    """Rerunning in the same workdir with a changed setting refuses the run in one
    line (no traceback), and compare.json / compare.md keep the earlier runs."""
    from asl_jax.training.workdir import WorkdirConfigError

    workdir = str(tmp_path / "runs")
    shutil.copytree(comparison.workdir, workdir)
    earlier = json.load(open(os.path.join(workdir, "compare.json")))["runs"]
    logged = []

    def train_fn(config, run_dir, **kwargs):
        raise WorkdirConfigError(f"{run_dir} holds checkpoints of a run with a different config")

    result = compare.compare(
        comparison.config(),
        workdir,
        ("bce",),
        command="python -m train.compare --losses=bce --config.learning_rate=0.5",
        train_fn=train_fn,
        handle_signals=False,
        log=logged.append,
    )
    assert result["status"] == "failed"
    assert logged[-1].endswith(
        "refused: " + f"{workdir}/bce holds checkpoints of a run with a different config"
    )
    assert not any("Traceback" in line for line in logged)
    written = json.load(open(os.path.join(workdir, "compare.json")))
    assert written["losses"] == ["bce", "asl_adaptive"]
    assert written["runs"] == earlier  # the refused BCE run still reports the earlier result
    md = open(os.path.join(workdir, "compare.md")).read()
    assert "| BCE |" in md and "| ASL + adaptive γ− |" in md
    assert sorted(os.listdir(os.path.join(workdir, "plots"))) == ["delta_p.png", "map.png"]


@pytest.mark.parametrize("seeds", [None, (0, 1)])
def test_a_second_comparison_in_a_workdir_in_use_is_refused_before_any_run(tmp_path, seeds):
    from asl_jax.training.lock import WorkdirBusyError, lock_workdir
    from train.configs.default import get_config

    def train_fn(*args, **kwargs):
        raise AssertionError("no run may start")

    with lock_workdir(tmp_path, what="python -m train.compare (the first)"):
        with pytest.raises(WorkdirBusyError, match=r"in use by process \d+ .*\(the first\)"):
            if seeds is None:
                compare.compare(get_config(), tmp_path, ("bce",), train_fn=train_fn)
            else:
                compare.compare_seeds(get_config(), tmp_path, ("bce",), seeds, train_fn=train_fn)
    assert os.listdir(tmp_path) == []
