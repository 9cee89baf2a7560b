"""``python -m benchmarks.models --heads`` (linear against ML-Decoder) runs on a tiny input and
reports what it promises. Nothing about speed is asserted."""

import json

import pytest

from benchmarks import models as models_benchmark

TINY = ["--heads", "--models", "resnet18", "--image-size", "32", "--batch", "2"]
TINY += ["--rounds", "1", "--fast-compile", "--head-classes", "3", "120"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("heads_bench")
    output, results = tmp / "BENCHMARKS.md", tmp / "heads.json"
    output.write_text("# Benchmarks\n\nNotes that must survive.\n")
    run = models_benchmark.heads_main([*TINY, "--output", str(output), "--json", str(results)])
    return run, output.read_text(), json.loads(results.read_text())


def test_every_head_and_class_count_is_timed(tiny_run):
    results, _, _ = tiny_run
    assert [(r.head, r.num_classes) for r in results] == [
        ("linear", 3), ("ml_decoder", 3), ("linear", 120), ("ml_decoder", 120),
    ]  # fmt: skip
    for result in results:
        assert set(result.timings) == {models_benchmark.EVAL, models_benchmark.TRAIN}
        assert all(t.median > 0 for t in result.timings.values())


def test_ml_decoder_parameters_are_counted_in_the_head(tiny_run):
    results, _, _ = tiny_run
    by = {(r.head, r.num_classes): r for r in results}
    assert by[("linear", 3)].head_parameters == 512 * 3 + 3
    # 120 classes: 100 queries of 2 classes each; 768-wide decoder on 512 input channels.
    mld = by[("ml_decoder", 120)]
    expected_min = 512 * 768 + 100 * 768 + 100 * 768 * 2 + 120
    assert mld.head_parameters > expected_min
    assert mld.parameters - mld.head_parameters == by[("linear", 120)].parameters - 512 * 120 - 120


def test_the_document_section_and_json_are_written(tiny_run):
    _, document, data = tiny_run
    assert "Notes that must survive." in document
    assert "<!-- models_heads:begin -->" in document and "| 120 | ml_decoder |" in document
    assert "Load average when the run ended" in document
    assert data["benchmark"] == "models_heads" and len(data["results"]) == 4
