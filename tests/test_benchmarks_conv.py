"""The convolution benchmark computes the same gradients as PyTorch and reports every variant
(on tiny layers; nothing about speed is asserted)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("torch", reason="benchmarks.conv compares with PyTorch")

from benchmarks import conv  # noqa: E402
from benchmarks.models import _import_torch  # noqa: E402

TINY = (conv.Layer("1×1", 8, 8, 16, 1), conv.Layer("3×3/2", 9, 4, 8, 3, 2))


def test_every_variant_agrees_with_pytorch_and_is_reported():
    from asl_jax.models import cpu_compiler_options

    torch = _import_torch(1)
    results = [
        conv.run_layer(torch, layer, 2, 1, cpu_compiler_options("resnet50")) for layer in TINY
    ]
    pointwise, strided = results
    assert len(pointwise.timings) == 3 * 4 and len(strided.timings) == 3 * 3  # no matmul variant
    for result in results:
        assert max(result.max_rel_diff.values()) < 1e-5, result.max_rel_diff
    text = conv.table(results)
    assert "| 1×1 | weight gradient |" in text and "| 3×3/2 | input gradient |" in text
    assert "Summed over the layers" in conv.totals_line(results)


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        conv.parse_args(["--rounds", "0"])
