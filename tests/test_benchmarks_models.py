"""The JAX-vs-PyTorch model benchmark runs on a tiny input and reports what it promises.

Nothing about speed is asserted; the logits of the two frameworks must agree (same weights).
"""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("torch", reason="benchmarks.models compares with PyTorch")
pytest.importorskip("torchvision", reason="benchmarks.models builds torchvision's ResNets")

from benchmarks import models as models_benchmark  # noqa: E402

TINY = ["--models", "resnet18", "--image-size", "32", "--batch", "2", "--rounds", "1"]
TINY += ["--no-compile", "--fast-compile"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models_bench")
    output, results = tmp / "BENCHMARKS.md", tmp / "models.json"
    output.write_text("# Benchmarks\n\nNotes that must survive.\n")
    log = tmp / "stdout.txt"
    with open(log, "w") as f:
        saved, sys.stdout = sys.stdout, f
        try:
            run = models_benchmark.main([*TINY, "--output", str(output), "--json", str(results)])
        finally:
            sys.stdout = saved
    return run, output.read_text(), json.loads(results.read_text()), log.read_text()


def test_every_framework_and_mode_is_timed_and_measured(tiny_run):
    (result,), _, _, _ = tiny_run
    # resnet18 has CPU fusions: JAX runs with and without them.
    frameworks = {models_benchmark.JAX, models_benchmark.JAX_FUSED, models_benchmark.EAGER}
    modes = {models_benchmark.EVAL, models_benchmark.TRAIN}
    assert set(result.timings) == {f"{f} / {m}" for f in frameworks for m in modes}
    for key, candidate in result.candidates.items():
        assert result.timings[key].median > 0 and len(result.timings[key].samples) == 1
        assert candidate.peak_growth_bytes is not None and candidate.peak_growth_bytes >= 0
        is_jax = candidate.framework in (models_benchmark.JAX, models_benchmark.JAX_FUSED)
        assert (candidate.xla_bytes is not None and candidate.xla_bytes > 0) == is_jax
    assert result.candidates[f"{models_benchmark.JAX} / {models_benchmark.TRAIN}"].flops > 0


def test_the_two_frameworks_compute_the_same_thing(tiny_run):
    (result,), _, _, stdout = tiny_run
    assert result.logits_rel_diff[models_benchmark.EAGER] < 1e-4
    assert result.logits_rel_diff[models_benchmark.JAX_FUSED] < 1e-5
    losses = result.first_losses
    np.testing.assert_allclose(losses[models_benchmark.EAGER], losses[models_benchmark.JAX], 1e-3)
    # Batch norm over 2 images of 1×1 pixels amplifies rounding: PyTorch's tolerance.
    np.testing.assert_allclose(
        losses[models_benchmark.JAX_FUSED], losses[models_benchmark.JAX], 1e-3
    )
    printed = re.search(r"PyTorch eager logits vs JAX: max relative difference (\S+)\.", stdout)
    assert printed and float(printed.group(1)) < 1e-4


def test_section_table_and_json_are_written(tiny_run):
    _, text, data, stdout = tiny_run
    assert "Notes that must survive." in text and "<!-- models:begin -->" in text
    assert "## Models: JAX vs PyTorch" in text and "### resnet18: 32 px, batch 2" in text
    rows = ("| eval forward | JAX (jit) |", "| training step | PyTorch eager |")
    rows += ("| training step | JAX (jit, CPU fusions) |",)
    for row in rows:
        assert row in text and row in stdout
    assert "On paper: XLA counts" in text and "- Machine: " in text
    assert "CPU fusions of resnet18: `INDIVIDUAL_DOT`" in text
    assert "shared" in text
    assert data["benchmark"] == "models" and data["machine"]["versions"]["torch"]
    assert data["results"][0]["name"] == "resnet18"


def test_peak_rss_growth_sees_an_allocation():
    growth, out = models_benchmark.peak_rss_growth(lambda: np.ones(64 * 2**20 // 8).sum())
    if growth is None:
        pytest.skip("no /proc/self/clear_refs on this system")
    assert out == 64 * 2**20 // 8 and growth >= 60 * 2**20


@pytest.mark.parametrize(
    "argv",
    [
        ["--rounds", "0"],
        ["--batch", "0"],
        ["--image-size", "40"],
        ["--models", "cnn"],
    ],
)
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        models_benchmark.parse_args(argv)
