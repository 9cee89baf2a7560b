"""Convolutions at ResNet-50's layer shapes on CPU: JAX (XLA's default and the model's CPU
library fusions, and 1×1 convolutions as matrix products) against PyTorch eager.

For each layer shape (batch ``--batch``, 224 px input) three operations, each timed alone:

- **forward**: ``conv(x, w)``;
- **input gradient**: ``∂/∂x`` of ``<conv(x, w), g>`` (what backpropagation asks of the layer);
- **weight gradient**: ``∂/∂w`` of the same.

JAX: ``lax.conv_general_dilated`` in NHWC / HWIO (Flax's layout) and its ``jax.vjp``, jitted with
XLA's default options and with ResNet-50's ``cpu_fusions`` (`asl_jax.models.cpu_compiler_options`);
for a 1×1 convolution with stride 1 also the same product written as a matrix product
(``x.reshape(-1, C) @ w``), whose gradients are matrix products too. PyTorch: ``conv2d`` in NCHW
and ``aten.convolution_backward`` (the kernel autograd calls) for each gradient alone. All
candidates of a layer are timed in one process, interleaved, a new random order each round;
ratios are of medians to PyTorch's.

    python -m benchmarks.conv                       # batch 8: stdout and JSON
    python -m benchmarks.conv --update-doc          # also BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _machine, _timing

SECTION = "conv"
DEFAULT_JSON = "benchmarks/results/conv.json"
OPERATIONS = ("forward", "input gradient", "weight gradient")
JAX_DEFAULT, JAX_FUSED, JAX_MATMUL, TORCH = (
    "JAX (jit)",
    "JAX (jit, CPU fusions)",
    "JAX 1×1 as matmul",
    "PyTorch eager",
)


@dataclasses.dataclass(frozen=True)
class Layer:
    """One convolution of ResNet-50 at 224 px: input side, channels in and out, kernel, stride."""

    name: str
    side: int
    channels_in: int
    channels_out: int
    kernel: int
    stride: int = 1

    @property
    def padding(self) -> int:
        return self.kernel // 2

    @property
    def is_pointwise(self) -> bool:
        return self.kernel == 1 and self.stride == 1


#: A sample of ResNet-50's convolutions: the stem, and a 3×3 and 1×1 of each stage.
LAYERS = (
    Layer("stem 7×7/2, 3→64 @224", 224, 3, 64, 7, 2),
    Layer("stage 1 3×3, 64→64 @56", 56, 64, 64, 3),
    Layer("stage 1 1×1, 256→64 @56", 56, 256, 64, 1),
    Layer("stage 2 3×3, 128→128 @28", 28, 128, 128, 3),
    Layer("stage 3 3×3, 256→256 @14", 14, 256, 256, 3),
    Layer("stage 3 1×1, 1024→256 @14", 14, 1024, 256, 1),
    Layer("stage 4 3×3, 512→512 @7", 7, 512, 512, 3),
    Layer("stage 4 1×1, 512→2048 @7", 7, 512, 2048, 1),
)


def _jax_conv(layer: Layer) -> Callable[[jax.Array, jax.Array], jax.Array]:
    pad = ((layer.padding, layer.padding),) * 2

    def conv(x: jax.Array, w: jax.Array) -> jax.Array:
        return jax.lax.conv_general_dilated(
            x, w, (layer.stride,) * 2, pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    return conv


def _pointwise_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """A 1×1, stride-1 convolution as one matrix product over every pixel."""
    batch, height, width, channels = x.shape
    out = x.reshape(-1, channels) @ w.reshape(channels, -1)
    return out.reshape(batch, height, width, -1)


def _operations(conv: Callable) -> dict[str, Callable]:
    """forward, input gradient and weight gradient of ``conv`` (the gradients of ``<conv, g>``)."""
    return {
        "forward": lambda x, w, g: conv(x, w),
        "input gradient": lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0],
        "weight gradient": lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0],
    }


def jax_candidates(
    layer: Layer, x: np.ndarray, w: np.ndarray, g: np.ndarray, fusions: dict
) -> dict[tuple[str, str], tuple[Callable[[], object], np.ndarray]]:
    """``{(operation, framework): (timed call, its result)}`` of the JAX variants."""
    args = [jnp.asarray(a) for a in (x, w, g)]
    variants = {JAX_DEFAULT: (_jax_conv(layer), None), JAX_FUSED: (_jax_conv(layer), fusions)}
    if layer.is_pointwise:
        variants[JAX_MATMUL] = (_pointwise_matmul, None)
    out = {}
    for framework, (conv, options) in variants.items():
        for operation, fn in _operations(conv).items():
            compiled = jax.jit(fn).lower(*args).compile(options)
            out[operation, framework] = (
                lambda c=compiled: jax.block_until_ready(c(*args)),
                np.asarray(compiled(*args)),
            )
    return out


def torch_candidates(
    torch, layer: Layer, x: np.ndarray, w: np.ndarray, g: np.ndarray
) -> dict[tuple[str, str], tuple[Callable[[], object], np.ndarray]]:
    """PyTorch's three operations in NCHW; results returned in JAX's layouts."""
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    tw = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
    tg = torch.from_numpy(g.transpose(0, 3, 1, 2).copy())
    stride, padding = [layer.stride] * 2, [layer.padding] * 2

    def backward(mask: list[bool]) -> Callable[[], object]:
        def call():
            return torch.ops.aten.convolution_backward(
                tg, tx, tw, None, stride, padding, [1, 1], False, [0, 0], 1, mask
            )

        return call

    def forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(tx, tw, stride=stride, padding=padding)

    nhwc = lambda r: r.numpy().transpose(0, 2, 3, 1)  # noqa: E731
    calls = {
        "forward": (forward, nhwc),
        "input gradient": (backward([True, False, False]), lambda r: nhwc(r[0])),
        "weight gradient": (
            backward([False, True, False]),
            lambda r: r[1].numpy().transpose(2, 3, 1, 0),  # OIHW -> HWIO
        ),
    }
    return {(op, TORCH): (call, to_jax(call())) for op, (call, to_jax) in calls.items()}


@dataclasses.dataclass
class LayerResult:
    layer: Layer
    timings: dict[str, _timing.Timing]  # "operation / framework"
    max_rel_diff: dict[str, float]  # "operation / framework" -> vs PyTorch's result


def run_layer(torch, layer: Layer, batch: int, rounds: int, fusions: dict) -> LayerResult:
    rng = np.random.default_rng(0)
    side_out = (layer.side + 2 * layer.padding - layer.kernel) // layer.stride + 1
    x = rng.standard_normal((batch, layer.side, layer.side, layer.channels_in), np.float32)
    w = rng.standard_normal(
        (layer.kernel, layer.kernel, layer.channels_in, layer.channels_out), np.float32
    )
    w /= np.sqrt(layer.kernel**2 * layer.channels_in)
    g = rng.standard_normal((batch, side_out, side_out, layer.channels_out), np.float32)
    candidates = {
        **jax_candidates(layer, x, w, g, fusions),
        **torch_candidates(torch, layer, x, w, g),
    }
    diffs = {}
    for (operation, framework), (_, result) in candidates.items():
        reference = candidates[operation, TORCH][1]
        scale = float(np.abs(reference).max()) or 1.0
        diffs[f"{operation} / {framework}"] = float(np.abs(result - reference).max()) / scale
    calls = {f"{op} / {fw}": call for (op, fw), (call, _) in candidates.items()}
    timings = _timing.interleaved_timings(calls, rounds=rounds, warmup=1, min_sample_seconds=0.05)
    return LayerResult(layer, timings, diffs)


def table(results: Sequence[LayerResult]) -> str:
    """One row per layer × operation: PyTorch's time and each JAX variant's ratio to it."""
    frameworks = [JAX_DEFAULT, JAX_FUSED, JAX_MATMUL]
    headers = ["layer", "operation", f"{TORCH} ms"] + [f"{f} × PyTorch" for f in frameworks]
    rows = []
    for r in results:
        for operation in OPERATIONS:
            torch_ms = r.timings[f"{operation} / {TORCH}"].median
            row = [r.layer.name, operation, f"{torch_ms * 1e3:.2f}"]
            for framework in frameworks:
                t = r.timings.get(f"{operation} / {framework}")
                row.append("—" if t is None else f"{t.median / torch_ms:.2f}×")
            rows.append(row)
    return _timing.markdown_table(headers, rows, align="ll" + "r" * 4)


def totals_line(results: Sequence[LayerResult]) -> str:
    """Each framework's time summed over the sample, per operation, relative to PyTorch's."""
    parts = []
    for operation in OPERATIONS:

        def total(framework: str, operation: str = operation) -> float:
            return sum(r.timings[f"{operation} / {framework}"].median for r in results)

        ratios = ", ".join(
            f"{fw} {total(fw) / total(TORCH):.2f}×" for fw in (JAX_DEFAULT, JAX_FUSED)
        )
        parts.append(f"{operation}: {ratios}")
    worst = max(d for r in results for d in r.max_rel_diff.values())
    return (
        "Summed over the layers, time relative to PyTorch's: " + "; ".join(parts)
        + f". Largest difference of a result from PyTorch's: {worst:.1e} of its largest value."
    )  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conv", description=__doc__)
    parser.add_argument("--batch", type=int, default=8, help="images per batch (8)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--layers", type=int, default=len(LAYERS), help="the first N layers")
    _timing.add_document_flags(parser, SECTION)
    parser.add_argument("--json", default=DEFAULT_JSON, help="JSON file ('' to skip)")
    args = parser.parse_args(argv)
    for field in ("batch", "rounds", "layers"):
        if getattr(args, field) < 1:
            parser.error(f"--{field} must be >= 1, got {getattr(args, field)}")
    return args


def main(argv: Sequence[str] | None = None) -> list[LayerResult]:
    from asl_jax.models import cpu_compiler_options
    from benchmarks.models import _import_torch

    args = parse_args(argv)
    info = _machine.machine_info(("numpy", "torch"))
    print(_machine.machine_markdown(info))
    torch = _import_torch(_machine.usable_cores())
    fusions = cpu_compiler_options("resnet50")
    results = []
    for layer in LAYERS[: args.layers]:
        results.append(run_layer(torch, layer, args.batch, args.rounds, fusions))
        print(table(results[-1:]))
    text = f"{table(results)}\n\n{totals_line(results)}"
    print(f"\n{text}")
    command = ("python -m benchmarks.conv " + " ".join(argv or sys.argv[1:])).strip()
    body = (
        f"## Convolutions at ResNet-50's shapes: JAX vs PyTorch\n\n`{command}`\n\n"
        f"{_machine.machine_markdown(info)}\n\nBatch {args.batch}, float32, median of "
        f"{args.rounds} interleaved rounds; CPU fusions: ResNet-50's "
        f"(`{', '.join(fusions.values())}`).\n\n{text}\n"
    )
    _timing.publish(args, SECTION, body, command=command, info=info, results=results)
    return results


if __name__ == "__main__":
    main()
