"""Loss-kernel benchmark: ASL value-and-grad against optax BCE, autodiff and PyTorch.

Times ``jax.jit(jax.value_and_grad(lambda z, y: asymmetric_loss(z, y).sum()))`` on float32 logits
of a few sizes, side by side in one process with:

- `optax.sigmoid_binary_cross_entropy` in the same harness (the yardstick: ratios are to it);
- ASL with γ− traced (the adaptive path) and with detached focusing weights;
- JAX autodiff of two plain jnp ASL implementations written here: the official PyTorch
  formulation transcribed to jnp (sigmoid, clamp, log of an eps-clamped probability, pow weights)
  and a log-space formula (log_sigmoid, the same maths as ours without the custom VJP);
- when torch is importable, the official formulation in PyTorch (forward + backward on CPU, with
  as many intra-op threads as XLA uses).

It also reads XLA's temporary memory (`compiled.memory_analysis()`) and counts, in the optimized
HLO, the transcendental operations per element, the fusions and the B×K arrays each call reads and
writes; from those counts it estimates the loss' cost on accelerators ("On paper").

The pieces: `benchmarks.loss_reference` (the reference formulations), `benchmarks.loss_hlo` (HLO
counts), `benchmarks.loss_kernel` (the candidates, the timed run, its tables and goals),
`benchmarks.loss_on_paper` (the accelerator estimate). This module renders the BENCHMARKS.md
section and is the command line. Results are also written as JSON with the machine they were
measured on (`--json`, default ``benchmarks/results/loss.json``).

Usage (from the repository root)::

    python -m benchmarks.loss                       # default sizes: stdout, benchmarks/results/
    python -m benchmarks.loss --rounds 100 --update-doc   # also its section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from asl_jax import asymmetric_loss
from benchmarks import _machine, _timing
from benchmarks.loss_hlo import TRANSCENDENTAL_OPS, HloStats, hlo_stats
from benchmarks.loss_kernel import (
    AUTODIFF_LOG,
    AUTODIFF_OFFICIAL,
    FLOOR_PASS,
    FLOOR_SUM,
    GRAD_ONLY,
    OPTAX_BCE,
    OPTAX_BCE_VALUE_ONLY,
    OURS,
    OURS_DETACHED,
    OURS_TRACED,
    TORCH,
    TORCH_DETACHED,
    VALUE_ELEMENTWISE,
    VALUE_ONLY,
    SizeResult,
    _mb,
    _ms,
    breakdown_table,
    build_candidates,
    goals,
    main_table,
    parse_size,
    run_size,
)
from benchmarks.loss_on_paper import on_paper
from benchmarks.loss_reference import (
    CLIP,
    EPS,
    GAMMA_NEG,
    GAMMA_POS,
    log_space_asl,
    official_formulation_asl,
    torch_available,
)

__all__ = [
    "AUTODIFF_LOG",
    "AUTODIFF_OFFICIAL",
    "CLIP",
    "EPS",
    "FLOOR_PASS",
    "FLOOR_SUM",
    "GAMMA_NEG",
    "GAMMA_POS",
    "GRAD_ONLY",
    "OPTAX_BCE",
    "OPTAX_BCE_VALUE_ONLY",
    "OURS",
    "OURS_DETACHED",
    "OURS_TRACED",
    "TORCH",
    "TORCH_DETACHED",
    "TRANSCENDENTAL_OPS",
    "VALUE_ELEMENTWISE",
    "VALUE_ONLY",
    "HloStats",
    "SizeResult",
    "asymmetric_loss",
    "build_candidates",
    "hlo_stats",
    "log_space_asl",
    "main",
    "official_formulation_asl",
    "on_paper",
    "render_markdown",
    "run_size",
]

DEFAULT_SIZES = ("1024x2000", "128x80", "4096x9605")
SECTION = "loss"
DEFAULT_JSON = "benchmarks/results/loss.json"


def render_markdown(results: Sequence[SizeResult], info: dict, command: str) -> str:
    """The "Loss kernel" section of BENCHMARKS.md."""
    out = [
        "## Loss kernel",
        "",
        "`jax.jit(jax.value_and_grad(lambda z, y: asymmetric_loss(z, y).sum()))` with the paper's "
        f"COCO setting (γ+ = {GAMMA_POS:g}, γ− = {GAMMA_NEG:g}, m = {CLIP:g}) on float32 logits, "
        "against optax's BCE in the same harness, our traced-γ− (adaptive) and detached-weight "
        "paths, JAX autodiff of two plain jnp ASL implementations written in the benchmark (the "
        "official formulation: sigmoid, clamp, log of an eps-clamped probability, pow weights; "
        "and a log-space formula, the maths of ours without the custom VJP), and the official "
        "formulation in PyTorch (forward + backward on CPU, as many threads as XLA uses).",
        "",
        f"Command: `{command}`",
        "",
        _machine.machine_markdown(info),
        "",
        "How it is measured: every candidate is compiled and warmed up first (compilation is not "
        "timed), then all candidates are called round-robin, in a new random order each round; "
        "each call ends with `block_until_ready`. The table gives the median over the rounds, "
        "the interquartile range relative to the median (the noise), and ratios of medians to "
        "optax BCE measured in the same rounds. **Absolute times depend on the machine and its "
        "load**: compare ratios. Inputs: logits ~ N(−2, 3²) clipped to ±15, "
        "labels Bernoulli(0.05). The last column checks that each candidate computes the same "
        "thing as ours (max |Δ gradient| relative to the largest gradient, |Δ loss| relative).",
        "",
        "Memory and HLO columns come from the jitted value-and-grad: XLA's temporary buffers "
        "(`compiled.memory_analysis().temp_size_in_bytes`), and counts in the optimized HLO "
        "(`jax.jit(f).lower(...).compile().as_text()`) of the instructions on B×K arrays, i.e. "
        "per element: transcendentals (exp, log, log1p, pow, divide, ...), other element-wise "
        "operations, fusions in the entry computation, and B×K arrays the entry computation "
        "reads and writes (memory traffic).",
        "",
    ]
    measured_on = f"Measured on: {_machine.machine_label(info)}."
    for result in results:
        out += [
            f"### {result.batch}×{result.classes} ({result.elements:,} elements, "
            f"{result.rounds} rounds)",
            "",
            measured_on,
            "",
            main_table(result),
            "",
        ]
        breakdown = breakdown_table(result)
        if breakdown:
            out += [
                f"Where the time goes ({result.batch}×{result.classes}): our value-and-grad "
                "split into its parts, next to memory-bound floors.",
                "",
                breakdown,
                "",
            ]
    out += ["### Goals", "", measured_on, "", goals(results), ""]
    largest = max(results, key=lambda r: r.elements)
    ns = largest.timings[OURS].median / largest.elements * 1e9
    out += [
        "### On paper: the loss on an accelerator",
        "",
        on_paper(largest.stats[OURS], ns),
        "",
        f"(CPU column: our measured value-and-grad rate on the {largest.batch}×{largest.classes} "
        f"run, {ns:.2f} ns per element, times B×K; measured on: {_machine.machine_label(info)}.)",
    ]
    return "\n".join(out)


def print_summary(result: SizeResult) -> None:
    print(f"\n{result.batch}x{result.classes}, {result.rounds} rounds")
    for name, timing in result.timings.items():
        stats = result.stats.get(name)
        memory = f"temp {_mb(stats.temp_bytes):>7} MiB" if stats else ""
        print(
            f"  {name:42s} {_ms(timing.median):>9} ms  {result.ratio(name):5.2f}× BCE  "
            f"±{timing.spread:4.0%}  {memory}"
        )


# ------------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.loss",
        description="ASL value-and-grad against optax BCE, autodiff and PyTorch (CPU).",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        default=[parse_size(s) for s in DEFAULT_SIZES],
        metavar="BxK",
        help=f"logits shapes (default: {' '.join(DEFAULT_SIZES)})",
    )
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds (default 40)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=300.0,
        help="fewer rounds (at least 5) for a size whose rounds would take longer (default 300)",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch candidates")
    parser.add_argument(
        "--no-breakdown", action="store_true", help="skip the 'where the time goes' candidates"
    )
    _timing.add_document_flags(parser, SECTION)
    parser.add_argument(
        "--json",
        default=DEFAULT_JSON,
        metavar="PATH",
        help=f"JSON file of the results and the machine ('' to skip; default {DEFAULT_JSON})",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> list[SizeResult]:
    args = parse_args(argv)
    info = _machine.machine_info(("numpy", "torch"))
    command = (
        _timing.command_line("benchmarks.loss")
        if argv is None
        else ("python -m benchmarks.loss " + " ".join(argv)).strip()
    )
    print(_machine.machine_markdown(info))
    if not args.no_torch and not torch_available():
        print("torch is not installed: the PyTorch candidates are skipped.")
    results = []
    for batch, classes in args.sizes:
        result = run_size(
            batch,
            classes,
            rounds=args.rounds,
            max_seconds=args.max_seconds,
            with_torch=not args.no_torch,
            breakdown=not args.no_breakdown,
            seed=args.seed,
        )
        print_summary(result)
        results.append(result)
    markdown = render_markdown(results, info, command)
    print("\n" + goals(results))
    output = _timing.document_path(args)
    if output:
        _timing.update_section(output, SECTION, markdown)
        print(f"\nWrote the '{SECTION}' section of {os.path.abspath(output)}")
    if args.json:
        path = _machine.write_results_json(args.json, SECTION, command, info, results)
        print(f"Wrote {os.path.abspath(path)}")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
