"""``python -m benchmarks.models --inference`` (JAX, ONNX Runtime, PyTorch eager): the table
reports images/s from the timings, bad arguments are refused, and (``slow``) a tiny run times
the three frameworks on the same weights and finds the same probabilities."""

import json

import pytest

pytest.importorskip("torch", reason="benchmarks.models compares with PyTorch")
pytest.importorskip("torchvision", reason="benchmarks.models builds torchvision's ResNets")

from benchmarks import _timing
from benchmarks import models as models_benchmark

TINY = ["--inference", "--models", "resnet18", "--image-size", "32", "--batches", "1", "3"]


def test_table_reports_images_per_second_from_the_median():
    timings = {
        framework: _timing.Timing(framework, samples, 1)
        for framework, samples in zip(
            models_benchmark.INFERENCE_FRAMEWORKS,
            [(0.5, 0.25, 1.0), (0.1, 0.1, 0.1), (2.0, 4.0, 8.0)],
            strict=True,
        )
    }
    result = models_benchmark.InferenceResult("resnet50", 224, 8, timings, {"x": 3e-7})
    row = models_benchmark.inference_table([result]).splitlines()[-1]
    assert row == "| resnet50 | 8 | 16.0 | 80.0 | 2.0 | x 3e-07 |"


@pytest.mark.parametrize("models", [["cnn"], ["resnet50", "nope"]])
def test_a_model_without_a_torch_counterpart_is_refused(models, capsys):
    with pytest.raises(SystemExit):
        models_benchmark.inference_main(["--inference", "--models", *models])
    assert "expected some of" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_run_times_three_frameworks_on_the_same_weights(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("jax2onnx")
    output, results = tmp_path / "BENCHMARKS.md", tmp_path / "inference.json"
    output.write_text("# Benchmarks\n\nNotes that must survive.\n")
    run = models_benchmark.inference_main(
        [*TINY, "--rounds", "1", "--output", str(output), "--json", str(results)]
    )
    assert [(r.model, r.batch_size) for r in run] == [("resnet18", 1), ("resnet18", 3)]
    for r in run:
        assert set(r.timings) == set(models_benchmark.INFERENCE_FRAMEWORKS)
        assert max(r.prob_abs_diff.values()) < 1e-4
    text = output.read_text()
    assert "Notes that must survive." in text and "<!-- models_inference:begin -->" in text
    assert "| resnet18 | 3 |" in text and "- Machine: " in text
    assert json.loads(results.read_text())["benchmark"] == "models_inference"
