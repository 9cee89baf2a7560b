"""Shared benchmark helpers: interleaved timing, Markdown tables, BENCHMARKS.md sections.

The machine description and the JSON output are in `benchmarks._machine`. On a shared, noisy
machine absolute times mean little; ratios measured side by side in one process mean more,
provided the noise hits every candidate alike. `interleaved_timings` therefore visits the
candidates round-robin, in a new random order each round, many rounds, and reports medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "Timing",
    "add_document_flags",
    "command_line",
    "document_path",
    "interleaved_timings",
    "markdown_table",
    "update_section",
]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call of one candidate, one sample per round."""

    name: str
    samples: tuple[float, ...]
    calls_per_sample: int

    def quantile(self, q: float) -> float:
        ordered = sorted(self.samples)
        position = q * (len(ordered) - 1)
        low, high = math.floor(position), math.ceil(position)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    @property
    def median(self) -> float:
        return self.quantile(0.5)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median: how noisy this candidate's samples were."""
        return (self.quantile(0.75) - self.quantile(0.25)) / self.median if self.median else 0.0


def interleaved_timings(
    candidates: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    warmup: int = 2,
    min_sample_seconds: float = 0.002,
    seed: int = 0,
) -> dict[str, Timing]:
    """Times every candidate in `rounds` interleaved rounds and returns one `Timing` each.

    Each candidate is a zero-argument callable that returns only when its work is done (wrap JAX
    calls in `jax.block_until_ready`); compile it before calling this function, the warm-up calls
    are not timed. A sample is the mean over enough back-to-back calls to last at least
    `min_sample_seconds` (tiny problems run in microseconds, below the timer's jitter). Every round
    calls the candidates in a fresh random order, so that slow phases of the machine and the order
    of the calls (caches, frequency) affect all candidates alike.

    Args:
      candidates: name -> callable.
      rounds: number of samples per candidate (>= 1).
      warmup: untimed calls per candidate before the first round.
      min_sample_seconds: minimum duration of one sample.
      seed: seed of the per-round shuffling.

    Returns:
      name -> Timing, in the order of `candidates`.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}.")
    calls: dict[str, int] = {}
    for name, fn in candidates.items():
        elapsed = 0.0
        for _ in range(max(warmup, 1)):
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
        calls[name] = max(1, math.ceil(min_sample_seconds / max(elapsed, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    order = list(candidates)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            fn, n = candidates[name], calls[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return {name: Timing(name, tuple(samples[name]), calls[name]) for name in candidates}


# ------------------------------------------------------------------------------------------------
# Command line


#: The document the benchmarks' sections belong to; written only when asked (``--update-doc``):
#: by default a benchmark prints its results and writes them to ``benchmarks/results/*.json``,
#: leaving the published rows of other machines and sizes as they are.
DOCUMENT = "BENCHMARKS.md"


def add_document_flags(parser: argparse.ArgumentParser, section: str) -> None:
    """``--update-doc`` (write ``section`` of BENCHMARKS.md) and ``--output FILE`` (another
    Markdown file whose section is written); neither: the document is left alone."""
    parser.add_argument(
        "--update-doc",
        action="store_true",
        help=f"write the '{section}' section of {DOCUMENT} (default: print and write --json only)",
    )
    parser.add_argument(
        "--output",
        default="",
        help=f"Markdown file whose '{section}' section is written (default: none)",
    )


def document_path(args: argparse.Namespace) -> str:
    """The Markdown file to update: ``--output``, BENCHMARKS.md with ``--update-doc``, or ''."""
    return args.output or (DOCUMENT if args.update_doc else "")


def command_line(module: str) -> str:
    """The command that reproduces this run, e.g. ``python -m benchmarks.loss --rounds 50``."""
    args = shlex.join(sys.argv[1:])
    return f"python -m {module}" + (f" {args}" if args else "")


# ------------------------------------------------------------------------------------------------
# Markdown


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], align: str = ""
) -> str:
    """A Markdown table; `align` holds one of ``l``/``r`` per column (default: first l, rest r)."""
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers):
        raise ValueError(f"align must have one letter per column ({len(headers)}), got {align!r}.")
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


_NEW_FILE = """# Benchmarks

Speed and memory of asl-jax, measured side by side in one process. Absolute times depend on the
machine and its load; ratios between candidates measured in the same run are what to look at.
Each section is written by the command it names; text outside the `<!-- name:begin/end -->`
markers is kept as it is.
"""


def update_section(path: str | os.PathLike, name: str, body: str) -> None:
    """Writes `body` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in `path`.

    The rest of the file is kept as it is; a missing section is appended, a missing file created.
    Several benchmarks can therefore own one section each of the same BENCHMARKS.md.
    """
    path = Path(path)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else _NEW_FILE
    if begin in text and end in text and text.index(begin) < text.index(end):
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    elif begin in text or end in text:
        raise ValueError(f"{path}: unbalanced markers for section {name!r}; fix them by hand.")
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def publish(
    args: argparse.Namespace, section: str, markdown: str, command: str, info: dict, results: object
) -> None:
    """Writes ``section`` of the document (``--update-doc`` / ``--output``) and the JSON
    (``--json``) of a benchmark run, and says where."""
    from benchmarks import _machine

    output = document_path(args)
    if output:
        update_section(output, section, markdown)
        print(f"Wrote the '{section}' section of {os.path.abspath(output)}")
    if args.json:
        path = _machine.write_results_json(args.json, section, command, info, results)
        print(f"Wrote {os.path.abspath(path)}")
