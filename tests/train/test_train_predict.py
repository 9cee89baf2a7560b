"""Tests of ``python -m train.predict`` on the BCE run of the shared tiny comparison."""

import json
import os

import numpy as np
import pytest

from asl_jax.data import create_source
from train.evaluate import predict_split
from train.predict import expand_inputs, format_predictions, predict_files, select_labels
from train.reopen import RunError, open_run


def test_cli_json_with_a_directory_a_broken_and_a_missing_image(comparison, images, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    missing = tmp_path / "missing.png"
    args = (f"--workdir={comparison.run}", "--json", "--top_k=2", "--threshold=0")
    proc = comparison.cli("train.predict", *args, str(images), str(broken), str(missing))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"error: {missing}: no such file or directory" in proc.stderr
    assert f"error: {broken}: cannot read image" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["step"] == 8 and result["model"] == "regular"
    assert result["threshold"] == 0.0 and result["top_k"] == 2
    # The directory's images, sorted, not the text file.
    assert [p["image"] for p in result["predictions"]] == [
        str(images / f"val{i}.png") for i in range(3)
    ]
    classes = open(os.path.join(comparison.run, "classes.txt")).read().split()
    for pred in result["predictions"]:
        probs = pred["probabilities"]
        assert list(probs) == classes and all(0.0 <= p <= 1.0 for p in probs.values())
        top = sorted(probs.items(), key=lambda item: -item[1])[:2]
        assert [(x["label"], x["probability"]) for x in pred["labels"]] == top
    assert [e["image"] for e in result["errors"]] == [str(broken), str(missing)]


def test_same_probabilities_as_evaluation_and_text_output(comparison, images):
    # The PNGs hold the first validation images at the training size: prediction (load_image,
    # then the eval step) must give the probabilities of the evaluation of those images.
    run = open_run(comparison.run, ema=True)
    source = create_source(run.config.data, seed=0)
    expected, _ = predict_split(run, source, "val", ema=True)
    result = predict_files(comparison.run, [str(images)], ema=True)
    assert result["model"] == "ema" and result["threshold"] == 0.5  # the run's threshold
    got = np.array([list(p["probabilities"].values()) for p in result["predictions"]])
    np.testing.assert_allclose(got, expected[:3], atol=1e-5)
    for pred in result["predictions"]:
        assert all(x["probability"] >= 0.5 for x in pred["labels"])
    assert format_predictions(result).splitlines()[0] == str(images / "val0.png")


def test_text_output():
    result = {
        "threshold": 0.5,
        "predictions": [
            {
                "image": "a.png",
                "labels": [
                    {"label": "red_circle", "probability": 0.97},
                    {"label": "ring", "probability": 0.612},
                ],
                "probabilities": {"red_circle": 0.97, "ring": 0.612, "cross": 0.1},
            },
            {"image": "b.png", "labels": [], "probabilities": {"red_circle": 0.2, "ring": 0.3}},
        ],
    }
    assert format_predictions(result).splitlines() == [
        "a.png",
        "  red_circle  0.970",
        "  ring        0.612",
        "b.png",
        "  (no label with p >= 0.5; most probable: ring 0.300)",
    ]


def test_select_labels_and_argument_errors(comparison, tmp_path):
    probs = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    names = ["a", "b", "c", "d", "e"]
    assert [x["label"] for x in select_labels(probs, names, threshold=0.5)] == ["b", "d", "c"]
    assert [x["label"] for x in select_labels(probs, names, threshold=0.0, top_k=2)] == ["b", "d"]
    assert select_labels(probs, names, threshold=0.95) == []
    images, errors = expand_inputs([str(tmp_path)])
    assert images == [] and "directory without images" in errors[0]["error"]
    with pytest.raises(ValueError, match="no image given"):
        predict_files(comparison.run, [])
    with pytest.raises(ValueError, match=r"--threshold=1\.5"):
        predict_files(comparison.run, ["x.png"], threshold=1.5)
    with pytest.raises(ValueError, match="--top_k=0"):
        predict_files(comparison.run, ["x.png"], top_k=0)
    with pytest.raises(RunError, match="does not exist"):
        predict_files(tmp_path / "nope", ["x.png"])
