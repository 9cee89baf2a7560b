"""Tests of ``python -m train.evaluate`` on the BCE run of the shared tiny comparison."""

import glob
import json
import os
import shutil

import numpy as np
import pytest

from asl_jax.metrics import METRIC_LABELS, threshold_metrics
from train.evaluate import METRICS, evaluate_workdir, format_result
from train.reopen import RunError, build_source


def test_cli_evaluates_the_latest_checkpoint_like_the_training_run(comparison):
    run = comparison.run
    proc = comparison.cli("train.evaluate", f"--workdir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.load(open(os.path.join(run, "summary.json")))
    final = summary["final"]
    assert f"{run}: model at step 8 on the val split (64 images, 30 classes" in proc.stdout
    assert f"| mAP | {100 * final['map']:.2f} |" in proc.stdout
    assert f"| OF1 | {100 * final['of1']:.2f} |" in proc.stdout
    assert f"in {os.path.join(run, 'eval.json')}" in proc.stdout

    result = json.load(open(os.path.join(run, "eval.json")))
    assert result["step"] == 8 and result["split"] == "val" and result["model"] == "regular"
    assert result["num_images"] == 64 and result["threshold"] == 0.5
    for key in METRICS:
        # Same checkpoint, same data, same metrics as the evaluation at the end of training.
        assert result[key] == pytest.approx(final[key], abs=1e-6), key
    classes = open(os.path.join(run, "classes.txt")).read().split()
    assert [c["class"] for c in result["per_class"]] == classes and len(classes) == 30
    aps = [c["ap"] for c in result["per_class"] if c["ap"] is not None]
    assert result["map"] == pytest.approx(np.mean(aps))
    # A class without positives in the split has no AP (and is left out of the mean).
    assert all((c["ap"] is None) == (c["num_positives"] == 0) for c in result["per_class"])


def test_each_metric_has_one_key_in_the_api_and_every_file(comparison):
    """threshold_metrics, eval.json, summary.json and metrics.jsonl spell each metric alike."""
    run = comparison.run
    api = set(threshold_metrics(np.array([[0.7, 0.2]]), np.array([[1, 0]])))
    assert set(METRICS) == {"map"} | api == set(METRIC_LABELS)
    result = evaluate_workdir(run, output=os.path.join(run, "eval_keys.json"))
    assert set(METRICS) <= set(result) and set(METRICS) <= set(json.load(open(result["output"])))
    with_ema = set(METRICS) | {f"{key}_ema" for key in METRICS}
    final = json.load(open(os.path.join(run, "summary.json")))["final"]
    assert with_ema <= set(final)
    records = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert all(with_ema <= set(r) for r in records if r["kind"] == "eval")
    assert not {key.upper() for key in with_ema} & (set(final) | set(result))


def test_ema_best_checkpoint_train_split_and_output(comparison, tmp_path):
    summary = json.load(open(os.path.join(comparison.run, "summary.json")))
    output = tmp_path / "best.json"
    result = evaluate_workdir(comparison.run, ema=True, best=True, output=output)
    assert result["step"] == summary["best_map_ema_step"] and result["model"] == "ema"
    assert result["map"] == pytest.approx(summary["best_map_ema"], abs=1e-6)
    assert json.load(open(output))["map"] == result["map"]
    assert "EMA model at step" in format_result(result)

    result = evaluate_workdir(comparison.run, split="train", step=4, threshold=0.3, output="")
    assert result["num_images"] == 256 and result["step"] == 4 and result["threshold"] == 0.3
    assert "output" not in result


def test_errors_name_the_problem(comparison, tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        evaluate_workdir(tmp_path / "nope")
    with pytest.raises(RunError, match=r"config\.json not found"):
        evaluate_workdir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(os.path.join(comparison.run, "config.json"), empty)
    with pytest.raises(RunError, match="no checkpoint in"):
        evaluate_workdir(empty)
    assert not (empty / "checkpoints").exists()  # looking did not create it
    with pytest.raises(RunError, match=r"no checkpoint of step 5 .*steps 4, 8"):
        evaluate_workdir(comparison.run, step=5)
    # The best evaluation's checkpoint is gone (training keeps it; removed by hand).
    copy = tmp_path / "copy"
    shutil.copytree(comparison.run, copy)
    summary = json.load(open(copy / "summary.json"))
    summary["best_map_step"] = 6
    json.dump(summary, open(copy / "summary.json", "w"))
    with pytest.raises(
        RunError,
        match=r"at step 6, but .* has no checkpoint of that step \(checkpoints of steps 4, 8\)",
    ):
        evaluate_workdir(copy, best=True)
    with pytest.raises(ValueError, match="--split='test'"):
        evaluate_workdir(comparison.run, split="test")


def test_cli_error_exit_status(comparison, tmp_path):
    proc = comparison.cli("train.evaluate", f"--workdir={tmp_path / 'missing'}")
    assert proc.returncode == 1
    assert f"error: workdir {tmp_path / 'missing'} does not exist" in proc.stderr


def test_cli_names_an_unreadable_checkpoint_in_one_line(comparison, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(comparison.run, copy)
    # Truncated data files, as a full disk or a storage fault leaves them.
    for path in glob.glob(str(copy / "checkpoints" / "8" / "**" / "d" / "*"), recursive=True):
        os.truncate(path, os.path.getsize(path) // 2)
    proc = comparison.cli("train.evaluate", f"--workdir={copy}")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "Event loop" not in proc.stderr, proc.stderr[-3000:]
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: the checkpoint of step 8 ({copy}/checkpoints/8) cannot be read")
    assert line.endswith("; give --step with one of 4")


def test_tuned_thresholds_through_evaluate_and_predict(comparison, tmp_path):
    from PIL import Image

    from asl_jax.metrics import tune_thresholds
    from asl_jax.training.evaluation import split_metrics
    from train.evaluate import predict_split
    from train.predict import predict_files
    from train.reopen import open_run

    copy = tmp_path / "run"
    shutil.copytree(comparison.run, copy)
    result = evaluate_workdir(copy, tune_on="train", output="")
    tuned = result["tuned"]
    assert tuned["split"] == "train" and "warning" not in tuned
    run = open_run(copy)
    source = build_source(run.config)
    train_probs, train_labels = predict_split(run, source, "train", ema=False)
    expected = tune_thresholds(train_probs, train_labels, default=0.5)
    np.testing.assert_allclose([c["threshold"] for c in result["per_class"]], expected)
    saved = json.load(open(copy / "thresholds.json"))
    assert saved["split"] == "train" and saved["step"] == 8 and saved["model"] == "regular"
    by_name = saved["thresholds"]  # keyed by class name
    assert [by_name[name] for name in run.class_names] == pytest.approx(expected.tolist())
    val_probs, val_labels = predict_split(run, source, "val", ema=False)
    at_tuned = split_metrics(val_probs, val_labels, threshold=expected)
    for key in ("cp", "cr", "cf1", "op", "or", "of1"):
        assert tuned[key] == pytest.approx(at_tuned[key]), key
    # Tuned and scored on one split: flagged as optimistic.
    same = evaluate_workdir(copy, tune_on="val", output="")["tuned"]
    assert "optimistic" in same["warning"]

    image = tmp_path / "val0.png"
    Image.fromarray(source.arrays("val")[0][0]).save(image)
    predicted = predict_files(copy, [str(image)], thresholds="tuned")
    assert predicted["threshold"] == "tuned"
    by_name = json.load(open(copy / "thresholds.json"))["thresholds"]  # now tuned on val
    probs = predicted["predictions"][0]["probabilities"]
    chosen = {x["label"] for x in predicted["predictions"][0]["labels"]}
    assert chosen == {name for name, p in probs.items() if p >= by_name[name]}
    assert chosen != {name for name, p in probs.items() if p >= 0.5}  # the thresholds matter
    with pytest.raises(ValueError, match="not both"):
        predict_files(copy, [str(image)], thresholds="tuned", threshold=0.3)
    os.remove(copy / "thresholds.json")
    with pytest.raises(RunError, match=r"thresholds\.json does not exist"):
        predict_files(copy, [str(image)], thresholds="tuned")


def test_cli_tunes_thresholds_and_warns_on_the_same_split(comparison, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(comparison.run, copy)
    proc = comparison.cli("train.evaluate", f"--workdir={copy}", "--tune_thresholds=val")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: the thresholds were tuned on the val split" in proc.stderr
    assert "| metric | % | % at the thresholds tuned on val |" in proc.stdout
    assert f"Per-class thresholds in {copy}/thresholds.json" in proc.stdout
    assert "| mAP |" in proc.stdout and "| – |" in proc.stdout.split("| mAP |")[1].split("\n")[0]


def test_writing_into_a_workdir_in_use_is_refused_reading_it_is_not(comparison, tmp_path):
    from asl_jax.training.lock import WorkdirBusyError, lock_workdir

    run = comparison.run
    with lock_workdir(run, what="python -m train (training)"):
        for kwargs in ({}, {"output": os.path.join(run, "mine.json")}, {"tune_on": "val"}):
            with pytest.raises(WorkdirBusyError, match=r"in use by process \d+ "):
                evaluate_workdir(run, **kwargs)
        assert evaluate_workdir(run, output=tmp_path / "e.json")["step"] == 8
    assert not os.path.exists(os.path.join(run, "mine.json"))
