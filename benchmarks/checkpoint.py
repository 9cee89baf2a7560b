"""The step-time hiccup of a checkpoint save: synchronous vs asynchronous, side by side.

The engine's jitted train step runs on one device; every ``--save-every`` steps the state is
checkpointed with :class:`asl_jax.training.checkpoint.Checkpointer`, once with
``async_save=False`` (the save blocks until written) and once with ``async_save=True`` (Orbax
writes in a background thread). Rounds alternate between the two, so a slow phase of the shared
machine hits both. Each step is timed with ``block_until_ready`` (the save call counted in the
step that triggers it), and reported as: the median step without a save, the median step that
triggers a save, the median step right after it (the background write competes for the CPU) and
the wall time of the whole round, final wait included.

    python -m benchmarks.checkpoint                       # CNN of ~20 MB of state, 5 rounds
    python -m benchmarks.checkpoint --tiny --json ''      # the smoke test's size
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from benchmarks import _machine, _timing
from benchmarks._train_common import (
    BenchModel,
    _single_device_mesh,
    _take_batches,
    make_config,
    programs_for,
)

SECTION = "checkpoint"
SYNC, ASYNC = "synchronous", "asynchronous"
MODES = {SYNC: False, ASYNC: True}
#: A CNN of width 96: ~1.7 M parameters, ~20 MB of train state (params, EMA, Adam moments).
SPEC = BenchModel("cnn", "CNN, width 96", "cnn", 96, 32, 32, 512, 64, False)
TINY_SPEC = BenchModel("cnn", "CNN, width 4 (tiny)", "cnn", 4, 16, 8, 64, 8, False)


@dataclasses.dataclass
class ModeResult:
    """The step times of one mode over every round (seconds)."""

    plain: list[float] = dataclasses.field(default_factory=list)  # steps without a save
    saving: list[float] = dataclasses.field(default_factory=list)  # steps that trigger a save
    after: list[float] = dataclasses.field(default_factory=list)  # the step after a save
    rounds: list[float] = dataclasses.field(default_factory=list)  # wall time of each round


@dataclasses.dataclass
class CheckpointResult:
    spec: BenchModel
    state_bytes: int
    steps: int
    save_every: int
    modes: dict[str, ModeResult]


def _round(programs: Any, state: Any, batches: list, *, async_save: bool, args: Any) -> tuple:
    """One round: ``args.steps`` steps, a save every ``args.save_every``; returns step times."""
    from asl_jax.training.checkpoint import Checkpointer

    directory = tempfile.mkdtemp(prefix="asl_jax_ckpt_bench_", dir=args.tmp_dir or None)
    ckpt = Checkpointer(directory, max_to_keep=2, keep_best=(), async_save=async_save)
    times, saved = [], set()
    start = time.perf_counter()
    try:
        for i in range(args.steps):
            t0 = time.perf_counter()
            state, metrics = programs.train(state, batches[i % len(batches)])
            jax.block_until_ready((state, metrics))
            if (i + 1) % args.save_every == 0:
                ckpt.save(state)
                saved.add(i)
            times.append(time.perf_counter() - t0)
        ckpt.wait()
        total = time.perf_counter() - start
    finally:
        ckpt.close()
        shutil.rmtree(directory, ignore_errors=True)
    return state, times, saved, total


def run(spec: BenchModel, args: Any) -> CheckpointResult:
    """Compiles the step once, then alternates synchronous and asynchronous rounds."""
    from asl_jax.data import create_source
    from asl_jax.training import parallel

    config = make_config(spec, {"name": "asl"}, cache_dir=args.cache_dir)
    source = create_source(config.data, seed=0)
    mesh = _single_device_mesh()
    programs = programs_for(config, source, spec, mesh)
    state = programs.init(jax.random.key(0))
    batches = [parallel.shard_batch(b, mesh) for b in _take_batches(source, config, 4)]
    state, _ = programs.train(state, batches[0])  # compiles
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))
    modes = {name: ModeResult() for name in MODES}
    for r in range(args.rounds):
        order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
        for name in order:
            state, times, saved, total = _round(
                programs, state, batches, async_save=MODES[name], args=args
            )
            out = modes[name]
            out.saving += [times[i] for i in sorted(saved)]
            out.after += [times[i + 1] for i in sorted(saved) if i + 1 < len(times)]
            # The first step of a round is left out too (the checkpointer was just created).
            out.plain += [
                t for i, t in enumerate(times) if i > 0 and i not in saved and i - 1 not in saved
            ]
            out.rounds.append(total)
    return CheckpointResult(spec, int(state_bytes), args.steps, args.save_every, modes)


def _ms(seconds: Sequence[float]) -> str:
    return f"{1e3 * statistics.median(seconds):.1f}" if seconds else "—"


def table(result: CheckpointResult) -> str:
    """The side-by-side table of the two modes (medians, ms), with the async/sync ratios."""
    rows = []
    sync = result.modes[SYNC]
    for name, mode in result.modes.items():
        hiccup = statistics.median(mode.saving) / statistics.median(mode.plain)
        ratio = statistics.median(mode.saving) / statistics.median(sync.saving)
        rows.append(
            [
                name,
                _ms(mode.plain),
                _ms(mode.saving),
                f"{hiccup:.1f}×",
                _ms(mode.after),
                f"{np.median(mode.rounds):.2f}",
                f"{ratio:.2f}×",
            ]
        )
    headers = [
        "save",
        "median step ms (no save)",
        "median step ms with a save",
        "save step / plain step",
        "median step ms after a save",
        f"round s ({result.steps} steps, final wait incl.)",
        "save step vs synchronous",
    ]
    return _timing.markdown_table(headers, rows)


def render_markdown(result: CheckpointResult, info: dict, command: str) -> str:
    rounds = len(result.modes[SYNC].rounds)
    return "\n\n".join(
        [
            "## Checkpoint saves: synchronous vs asynchronous",
            f"`{command}` — {result.spec.label} at {result.spec.image_size} px, batch "
            f"{result.spec.batch_size}, {result.state_bytes / 2**20:.1f} MiB of train state, "
            f"one device; a save every {result.save_every} steps, {rounds} rounds of "
            f"{result.steps} steps per mode, the modes alternating. A step's time includes the "
            "save call it triggers.",
            table(result),
            _machine.machine_markdown(info),
        ]
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checkpoint", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per mode (default 5)")
    parser.add_argument("--steps", type=int, default=40, help="steps per round (default 40)")
    parser.add_argument("--save-every", type=int, default=10, help="steps between two saves")
    parser.add_argument("--tiny", action="store_true", help="a tiny model (the smoke test)")
    parser.add_argument("--cache-dir", default="", help="where the shapes data is cached")
    parser.add_argument("--tmp-dir", default="", help="where the checkpoints are written")
    _timing.add_document_flags(parser, SECTION)
    parser.add_argument(
        "--json", default="benchmarks/results/checkpoint.json", help="JSON file ('' to skip)"
    )
    args = parser.parse_args(argv)
    for name in ("rounds", "steps", "save_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.save_every > args.steps:
        parser.error("--save-every must be at most --steps (a round must save)")
    return args


def main(argv: Sequence[str] | None = None) -> CheckpointResult:
    args = parse_args(argv)
    info = _machine.machine_info(("numpy", "orbax-checkpoint"))
    command = ("python -m benchmarks.checkpoint " + " ".join(argv or sys.argv[1:])).strip()
    print(_machine.machine_markdown(info))
    result = run(TINY_SPEC if args.tiny else SPEC, args)
    print(table(result))
    output = _timing.document_path(args)
    if output:
        _timing.update_section(output, SECTION, render_markdown(result, info, command))
        print(f"Wrote the '{SECTION}' section of {os.path.abspath(output)}")
    if args.json:
        path = _machine.write_results_json(args.json, SECTION, command, info, result)
        print(f"Wrote {os.path.abspath(path)}")
    return result


if __name__ == "__main__":
    main()
