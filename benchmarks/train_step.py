"""Training benchmark: train-step time per loss, input pipeline vs training loop, 1 vs 8 devices.

Three measurements, written to the ``train_step`` section of BENCHMARKS.md:

1. **Train-step time per loss.** The real jitted train step of the engine
   (`asl_jax.training.build_programs`, one program per loss config) for BCE, ASL with static γ
   (γ+ = 0, γ− = 4, m = 0.05), ASL with the adaptive γ− (traced from the state, updated from Δp
   every step), ASL with detached focusing weights and the focal loss (γ = 2), on the default
   config's small CNN (32 px, batch 64) and on ResNet-18 at 64 px (batch 32). Every program gets
   the same initial state and the same batches; the calls are interleaved round-robin (a new
   random order each round, `benchmarks._timing.interleaved_timings`), compilation excluded, each
   call ending with `jax.block_until_ready`. For the CNN, the step is also split into its parts
   (augmentation, forward, backward, optimizer/EMA) and the loss alone is timed on the step's
   logits, in the same rounds.
2. **Images/s of the training loop vs the input pipeline alone**: the shapes pipeline
   (`source.batches(...)`) alone, the train step alone on device-resident batches, and the loop
   (batches → `shard_batch` → train step) of the default config; the same for a folder dataset of
   JPEGs written to a temporary directory (decoded per batch, as for a dataset too large for
   memory).
3. **1 vs 8 simulated devices** (a correctness check of data parallelism, not a speed claim:
   the simulated devices share the host's cores): in a subprocess with
   ``jax_num_cpu_devices=8``, the same steps of adaptive ASL on a 1-device and an 8-device mesh;
   max |Δ| of the loss and γ− per step.

Usage (from the repository root)::

    python -m benchmarks.train_step                       # everything: stdout, JSON
    python -m benchmarks.train_step --rounds 40 --models cnn --update-doc  # and BENCHMARKS.md

One module per measurement: `benchmarks.train_step_time` (1), `benchmarks.train_throughput` (2),
`benchmarks.train_scaling` (3); `benchmarks._train_common` holds what they share. This module
renders the BENCHMARKS.md section and is the command line. Results are also written as JSON with
the machine they were measured on (`--json`, default ``benchmarks/results/train_step.json``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from asl_jax.compile_options import FAST_COMPILE
from benchmarks import _machine, _timing
from benchmarks._train_common import (
    _LOSS_ALONE,
    _PARTS,  # noqa: F401  (re-exported)
    ASL_ADAPTIVE,
    ASL_DETACHED,
    ASL_STATIC,
    BCE,
    BENCH_MODELS,
    FOCAL,
    LOSS_ALONE_ASL,
    LOSS_ALONE_BCE,
    LOSS_KEYS,
    LOSS_SETTINGS,
    PART_AUGMENT,
    PART_BACKWARD,
    PART_FORWARD,
    TINY_BENCH_MODELS,
    BenchModel,
    _specs,
    make_config,
)
from benchmarks.train_scaling import ScalingResult, run_scaling, scaling_table, scaling_worker
from benchmarks.train_step_time import (
    StepResult,
    breakdown_rows,
    breakdown_table,
    goals,
    goals_table,
    run_step_timings,
    step_table,
)
from benchmarks.train_throughput import (
    FOLDER_LOOP,
    FOLDER_MEMORY,
    FOLDER_PIPELINE,
    SHAPES_LOOP,
    SHAPES_PIPELINE,
    STEP_ALONE,
    ThroughputResult,
    run_throughput,
    throughput_ratios_table,
    throughput_table,
)

__all__ = [
    "ASL_ADAPTIVE",
    "ASL_DETACHED",
    "ASL_STATIC",
    "BCE",
    "BENCH_MODELS",
    "FOCAL",
    "FOLDER_LOOP",
    "FOLDER_MEMORY",
    "FOLDER_PIPELINE",
    "LOSS_ALONE_ASL",
    "LOSS_ALONE_BCE",
    "LOSS_SETTINGS",
    "PART_AUGMENT",
    "PART_BACKWARD",
    "PART_FORWARD",
    "SHAPES_LOOP",
    "SHAPES_PIPELINE",
    "STEP_ALONE",
    "TINY_BENCH_MODELS",
    "BenchModel",
    "ScalingResult",
    "StepResult",
    "ThroughputResult",
    "breakdown_rows",
    "breakdown_table",
    "goals",
    "goals_table",
    "main",
    "make_config",
    "parse_args",
    "render_markdown",
    "run_scaling",
    "run_step_timings",
    "run_throughput",
    "scaling_table",
    "step_table",
    "throughput_table",
]

SECTION = "train_step"
DEFAULT_JSON = "benchmarks/results/train_step.json"


def render_markdown(
    steps: Sequence[StepResult],
    throughput: ThroughputResult | None,
    scaling: ScalingResult | None,
    info: dict,
    command: str,
) -> str:
    """The `train_step` section of BENCHMARKS.md."""
    parts = [
        "## Training step",
        "The engine's jitted train step (`asl_jax.training.build_programs`: on-device "
        "augmentation, forward with batch norm, loss, gradient, Adam with weight decay, EMA, Δp "
        "statistics, the adaptive γ− update, the non-finite guard) with each loss, on one CPU "
        "device; then the input pipeline against the training loop; then 1 vs 8 simulated "
        "devices.",
        f"Command: `{command}`",
        _machine.machine_markdown(info),
        "How it is measured: one program per loss config, all with the same initial state (same "
        "key) and the same 4 batches, cycled; each program compiled first (not timed) and called "
        "once untimed; then the programs are called round-robin, in a new random order each "
        "round, each call ending with `block_until_ready` on the new state and metrics (the "
        "state is donated, so each program carries its own state forward). BCE is the engine's "
        "`bce` (our `asymmetric_loss` with γ = 0, m = 0, as fast as optax's BCE: see the loss "
        "section). Ratios: of medians, and the median of the per-round ratios with its IQR (the "
        "two programs ran within the same round, so a slow phase of the machine hits both). "
        "**Absolute times depend on the machine and its load**: compare ratios.",
    ]
    measured_on = f"Measured on: {_machine.machine_label(info)}."
    for result in steps:
        spec = result.spec
        width = f"width {spec.width}" if spec.width else "standard width (64)"
        parts.append(
            f"### {spec.label}: {spec.image_size} px, batch {spec.batch_size}, "
            f"{result.num_classes} classes, {width} ({result.rounds} rounds)"
        )
        parts.append(measured_on)
        parts.append(step_table(result))
        notes = []
        if all(name in result.timings for name in _LOSS_ALONE):
            step = result.timings[BCE].median
            asl, bce = (result.timings[name].median for name in _LOSS_ALONE)
            notes.append(
                f"The loss alone (value and gradient of the step's loss on {spec.batch_size}×"
                f"{result.num_classes} float32 logits, jitted alone, timed in the same rounds): "
                f"ASL with static γ {asl * 1e3:.3f} ms, BCE {bce * 1e3:.3f} ms, i.e. "
                f"{asl / step:.3%} and {bce / step:.3%} of the BCE step."
            )
        if result.final_gamma_neg is not None:
            notes.append(
                f"The adaptive run's γ− moved from 4 to {result.final_gamma_neg:.3f} during the "
                "timed steps: it is traced, read from and written to the state every step."
            )
        if notes:
            parts.append(" ".join(notes))
        table = breakdown_table(result)
        if table is not None:
            parts.append(
                f"Where the time of the {result.reference} step goes: the step's own code cut "
                "after each part and jitted alone, timed in the same rounds (cumulative; a part "
                "= the difference of two cumulative programs)."
            )
            parts.append(table)
    if goals(steps):
        parts.append("### Goals: the ASL step within 5% of the BCE step")
        parts.append(measured_on)
        parts.append(goals_table(steps))
    if throughput is not None:
        t = throughput
        parts.append(
            f"### Images/s: training loop vs input pipeline ({t.spec.label}, {t.spec.image_size} "
            f"px, batch {t.batch_size}, {t.loss}, {t.rounds} rounds)"
        )
        text = (
            "Each sample runs a new epoch's iterator for the given number of batches; the step "
            "and the loop dispatch asynchronously and block once at the end of the sample, as "
            "the engine does between logging points. The loop is the engine's inner loop without "
            "logging, evaluation and checkpoints."
        )
        if t.folder:
            f = t.folder
            text += (
                f" Folder dataset: {f['train_images']} training JPEGs of {f['pixels']}×"
                f"{f['pixels']} px ({f['bytes'] / max(f['images'], 1) / 1024:.1f} KiB each; "
                f"shapes images upscaled) resized to {t.spec.image_size} px when decoded, "
                f"{f['workers']} decoding threads, {f['prefetch']} batches prefetched; creating "
                f"the source decoded all {f['images']} images once in {f['check_seconds']:.2f} s "
                f"({f['images'] / f['check_seconds']:,.0f} images/s, its corruption check)."
            )
        parts.append(text)
        parts.append(measured_on)
        parts.append(throughput_table(t))
        parts.append(throughput_ratios_table(t))
    if scaling is not None:
        parts.append(
            f"### 1 vs {scaling.devices} simulated devices (correctness of data parallelism)"
        )
        parts.append(
            (
                f"A subprocess with `jax_num_cpu_devices={scaling.devices}` (set before JAX "
                "initialises)"
                if scaling.subprocess
                else f"This process (it already had {scaling.devices} CPU devices)"
            )
            + f": the default config with {scaling.loss}, {scaling.steps} steps on the same "
            f"batches (global batch {scaling.batch_size}) from the same initial state on a "
            f"1-device mesh and on an {scaling.devices}-device mesh (state replicated, batch "
            "split), the steps of the two alternating. The step time ratio is **not** a speed "
            f"measurement: the {scaling.devices} devices are simulated on the host's cores."
        )
        parts.append(measured_on)
        parts.append(scaling_table(scaling))
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring and ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_step",
        description="Train-step time per loss, pipeline vs loop images/s, 1 vs 8 devices (CPU).",
    )
    parser.add_argument(
        "--rounds", type=int, default=100, help="interleaved rounds of the step timings (100)"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=420.0,
        help="fewer rounds (at least 5) for a model whose rounds would take longer (420)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=sorted(BENCH_MODELS),
        default=list(BENCH_MODELS),
        help="models to time",
    )
    parser.add_argument(
        "--losses",
        nargs="+",
        choices=list(LOSS_KEYS),
        default=list(LOSS_KEYS),
        help="losses to time (bce is always included: it is the baseline)",
    )
    parser.add_argument(
        "--loop-rounds", type=int, default=10, help="rounds of the images/s part (10; 0 skips)"
    )
    parser.add_argument("--loop-steps", type=int, default=16, help="batches per shapes sample")
    parser.add_argument(
        "--folder-images", type=int, default=512, help="JPEGs of the folder dataset (0 skips)"
    )
    parser.add_argument("--folder-pixels", type=int, default=128, help="side of those JPEGs")
    parser.add_argument(
        "--scaling-steps", type=int, default=8, help="steps of the 1-vs-8-devices check (0 skips)"
    )
    parser.add_argument(
        "--reference-loss",
        choices=list(LOSS_KEYS),
        default="asl",
        help="loss of the step breakdown and of the images/s part (asl: the default config's)",
    )
    parser.add_argument(
        "--scaling-loss",
        choices=list(LOSS_KEYS),
        default="asl_adaptive",
        help="loss of the 1-vs-8-devices check (asl_adaptive: γ− and Δp move every step)",
    )
    parser.add_argument("--devices", type=int, default=8, help=argparse.SUPPRESS)
    _timing.add_document_flags(parser, SECTION)
    parser.add_argument(
        "--json",
        default=DEFAULT_JSON,
        metavar="PATH",
        help=f"JSON file of the results and the machine ('' to skip; default {DEFAULT_JSON})",
    )
    parser.add_argument("--cache-dir", default="", help="shapes cache ('' = ~/.cache/asl_jax)")
    parser.add_argument(
        "--num-train", type=int, default=0, help="shapes training images (0 = per model default)"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="tiny models and sizes, cheap compilation (the smoke test; figures mean nothing)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scaling-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    for name in ("loop_rounds", "loop_steps", "folder_images", "scaling_steps", "num_train"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.loop_rounds and args.loop_steps < 1:
        parser.error("--loop-steps must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark; returns ``{"steps", "throughput", "scaling", "markdown"}``."""
    args = parse_args(argv)
    if args.scaling_worker:
        scaling_worker(args)
        return {}
    info = _machine.machine_info(("numpy", "pillow"))
    command = (
        _timing.command_line("benchmarks.train_step")
        if argv is None
        else ("python -m benchmarks.train_step " + " ".join(argv)).strip()
    )
    print(_machine.machine_markdown(info))
    specs = _specs(args)
    losses = [LOSS_KEYS[k] for k in args.losses]
    steps = []
    for key in args.models:
        print(f"\nTrain step, {specs[key].label}:")
        result = run_step_timings(
            specs[key],
            losses=losses,
            rounds=args.rounds,
            max_seconds=args.max_seconds,
            reference=LOSS_KEYS[args.reference_loss],
            cache_dir=args.cache_dir,
            seed=args.seed,
            compiler_options=FAST_COMPILE if args.tiny else None,
        )
        print(step_table(result))
        table = breakdown_table(result)
        if table:
            print(table)
        steps.append(result)
    throughput = None
    if args.loop_rounds:
        print("\nImages/s, pipeline vs loop:")
        throughput = run_throughput(
            specs["cnn"],
            rounds=args.loop_rounds,
            steps=args.loop_steps,
            folder_images=args.folder_images,
            folder_pixels=args.folder_pixels,
            loss=LOSS_KEYS[args.reference_loss],
            cache_dir=args.cache_dir,
            seed=args.seed,
            compiler_options=FAST_COMPILE if args.tiny else None,
        )
        print(throughput_table(throughput))
        print(throughput_ratios_table(throughput))
    scaling = None
    if args.scaling_steps:
        print(f"\n1 vs {args.devices} devices (subprocess):")
        scaling = run_scaling(
            steps=args.scaling_steps,
            devices=args.devices,
            loss_key=args.scaling_loss,
            tiny=args.tiny,
            num_train=args.num_train,
            cache_dir=args.cache_dir,
            seed=args.seed,
        )
        print(scaling_table(scaling))
    markdown = render_markdown(steps, throughput, scaling, info, command)
    if goals(steps):
        print("\n" + goals_table(steps))
    output = _timing.document_path(args)
    if output:
        _timing.update_section(output, SECTION, markdown)
        print(f"\nWrote the '{SECTION}' section of {os.path.abspath(output)}")
    if args.json:
        results = {"steps": steps, "throughput": throughput, "scaling": scaling}
        path = _machine.write_results_json(args.json, SECTION, command, info, results)
        print(f"Wrote {os.path.abspath(path)}")
    return {"steps": steps, "throughput": throughput, "scaling": scaling, "markdown": markdown}


if __name__ == "__main__":
    main()
    sys.exit(0)
