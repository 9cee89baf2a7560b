"""The loss-kernel measurement: ASL value-and-grad against optax BCE, autodiff and PyTorch.

Compiles every candidate for one B×K size, checks that they compute the same loss and gradient
as ours, times them interleaved (`benchmarks._timing.interleaved_timings`) and reads their HLO
statistics (`benchmarks.loss_hlo`). `main_table`, `breakdown_table` and `goals` render the
results.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asl_jax import asymmetric_loss
from benchmarks import _timing
from benchmarks._machine import usable_cores
from benchmarks.loss_hlo import HloStats, hlo_stats
from benchmarks.loss_reference import (
    CLIP,
    GAMMA_NEG,
    GAMMA_POS,
    log_space_asl,
    official_formulation_asl,
    torch_asl,
    torch_available,
)

__all__ = [
    "SizeResult",
    "breakdown_table",
    "build_candidates",
    "goals",
    "main_table",
    "parse_size",
    "run_size",
]

# Names of the candidates (the table's rows).
OPTAX_BCE = "optax BCE"
OURS = "ASL, static γ (ours)"
OURS_TRACED = "ASL, traced γ− (ours)"
OURS_DETACHED = "ASL, detached weights (ours)"
AUTODIFF_OFFICIAL = "ASL autodiff, official formulation (jnp)"
AUTODIFF_LOG = "ASL autodiff, log-space formula (jnp)"
TORCH = "ASL PyTorch, official formulation"
TORCH_DETACHED = "ASL PyTorch, detached weights"
# "Where the time goes": parts of our static ASL and memory-bound floors.
VALUE_ONLY = "ASL value only: loss.sum()"
VALUE_ELEMENTWISE = "ASL value only, element-wise (no sum)"
GRAD_ONLY = "ASL gradient only"
OPTAX_BCE_VALUE_ONLY = "optax BCE value only"
FLOOR_SUM = "floor: (z * y).sum()"
FLOOR_PASS = "floor: z * y (read 2, write 1)"

# Which of our candidates each row is checked against (same maths, same gradient mode).
_SAME_AS = {
    OURS_TRACED: OURS,
    AUTODIFF_OFFICIAL: OURS,
    AUTODIFF_LOG: OURS,
    TORCH: OURS,
    TORCH_DETACHED: OURS_DETACHED,
}


# ------------------------------------------------------------------------------------------------
# Candidates


@dataclasses.dataclass
class _Candidate:
    call: Callable[[], object]
    result: Callable[[], tuple[float, np.ndarray]]  # (loss, gradient) for the agreement check
    stats: HloStats | None = None
    breakdown: bool = False  # belongs to "where the time goes", not to the main table


def _make_inputs(batch: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Mostly negative logits, a few percent positives: the shape of a trained multi-label head.
    # Clipped to ±15 so that the official formulation's pow never meets 0 ** 0 (NaN gradient).
    rng = np.random.default_rng(seed)
    logits = np.clip(rng.normal(-2.0, 3.0, size=(batch, classes)), -15, 15).astype(np.float32)
    labels = (rng.uniform(size=(batch, classes)) < 0.05).astype(np.float32)
    return logits, labels


def _jax_candidate(fn, args, num_elements: int, *, with_grad: bool = True) -> _Candidate:
    jitted = jax.jit(jax.value_and_grad(fn) if with_grad else fn)
    compiled = jitted.lower(*args).compile()

    def call():
        return jax.block_until_ready(compiled(*args))

    def result():
        value, grad = compiled(*args)
        return float(value), np.asarray(grad)

    return _Candidate(call, result if with_grad else None, hlo_stats(compiled, num_elements))


def _torch_candidate(logits: np.ndarray, labels: np.ndarray, *, detach: bool, threads: int):
    # OpenMP's default spin-waiting makes PyTorch's threads and XLA's fight over the cores when
    # both run in one process: PyTorch then measured 4-5x slower than on its own. Passive waiting
    # (set before torch loads libgomp) removes that, and does not slow PyTorch down on its own.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch  # optional dependency, imported only when used

    torch.set_num_threads(threads)
    x = torch.from_numpy(logits.copy()).requires_grad_(True)
    y = torch.from_numpy(labels.copy())

    def call():
        x.grad = None
        loss = torch_asl(torch, x, y, detach=detach)
        loss.backward()
        return loss

    def result():
        loss = call()
        return float(loss.detach()), x.grad.numpy().copy()

    return _Candidate(call, result)


def build_candidates(
    batch: int,
    classes: int,
    *,
    seed: int = 0,
    with_torch: bool = True,
    breakdown: bool = True,
    threads: int | None = None,
) -> dict[str, _Candidate]:
    """Compiles every candidate for one size; torch ones only if torch is importable."""
    logits_np, labels_np = _make_inputs(batch, classes, seed)
    z, y = jnp.asarray(logits_np), jnp.asarray(labels_np)
    n = batch * classes
    gamma = jnp.float32(GAMMA_NEG)

    def ours(z, y):
        return asymmetric_loss(z, y, gamma_pos=GAMMA_POS, gamma_neg=GAMMA_NEG, clip=CLIP).sum()

    candidates = {
        OPTAX_BCE: _jax_candidate(
            lambda z, y: optax.sigmoid_binary_cross_entropy(z, y).sum(), (z, y), n
        ),
        OURS: _jax_candidate(ours, (z, y), n),
        OURS_TRACED: _jax_candidate(
            lambda z, y, g: asymmetric_loss(
                z, y, gamma_pos=GAMMA_POS, gamma_neg=g, clip=CLIP
            ).sum(),
            (z, y, gamma),
            n,
        ),
        OURS_DETACHED: _jax_candidate(
            lambda z, y: asymmetric_loss(
                z, y, gamma_pos=GAMMA_POS, gamma_neg=GAMMA_NEG, clip=CLIP, detach_focal_weight=True
            ).sum(),
            (z, y),
            n,
        ),
        AUTODIFF_OFFICIAL: _jax_candidate(official_formulation_asl, (z, y), n),
        AUTODIFF_LOG: _jax_candidate(log_space_asl, (z, y), n),
    }
    if with_torch and torch_available():
        threads = threads or usable_cores()
        candidates[TORCH] = _torch_candidate(logits_np, labels_np, detach=False, threads=threads)
        candidates[TORCH_DETACHED] = _torch_candidate(
            logits_np, labels_np, detach=True, threads=threads
        )
    if breakdown:
        parts = {
            VALUE_ONLY: (ours, False),
            VALUE_ELEMENTWISE: (
                lambda z, y: asymmetric_loss(
                    z, y, gamma_pos=GAMMA_POS, gamma_neg=GAMMA_NEG, clip=CLIP
                ),
                False,
            ),
            GRAD_ONLY: (jax.grad(ours), False),
            OPTAX_BCE_VALUE_ONLY: (
                lambda z, y: optax.sigmoid_binary_cross_entropy(z, y).sum(),
                False,
            ),
            FLOOR_SUM: (lambda z, y: (z * y).sum(), False),
            FLOOR_PASS: (lambda z, y: z * y, False),
        }
        for name, (fn, with_grad) in parts.items():
            candidate = _jax_candidate(fn, (z, y), n, with_grad=with_grad)
            candidate.breakdown = True
            candidates[name] = candidate
    return candidates


# ------------------------------------------------------------------------------------------------
# Running


@dataclasses.dataclass
class SizeResult:
    batch: int
    classes: int
    rounds: int
    timings: dict[str, _timing.Timing]
    stats: dict[str, HloStats]
    grad_error: dict[str, float]  # max |grad - ours| relative to max |grad of ours|
    value_error: dict[str, float]  # |loss - ours| / |ours|

    @property
    def elements(self) -> int:
        return self.batch * self.classes

    def ratio(self, name: str, to: str = OPTAX_BCE) -> float:
        return self.timings[name].median / self.timings[to].median


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"a size is BATCHxCLASSES, e.g. 1024x2000; got {text!r}")
    batch, classes = int(match[1]), int(match[2])
    if batch < 1 or classes < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return batch, classes


def run_size(
    batch: int,
    classes: int,
    *,
    rounds: int,
    max_seconds: float | None = None,
    with_torch: bool = True,
    breakdown: bool = True,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> SizeResult:
    """Compiles, checks and times every candidate on one B×K size."""
    log(f"[{batch}x{classes}] compiling ...")
    candidates = build_candidates(
        batch, classes, seed=seed, with_torch=with_torch, breakdown=breakdown
    )
    # The candidates must compute the same thing before their times mean anything.
    results = {name: c.result() for name, c in candidates.items() if c.result is not None}
    grad_error, value_error = {}, {}
    for name, reference in _SAME_AS.items():
        if name in results:
            ref_value, ref_grad = results[reference]
            value, grad = results[name]
            scale = float(np.max(np.abs(ref_grad))) or 1.0
            grad_error[name] = float(np.max(np.abs(grad - ref_grad))) / scale
            value_error[name] = abs(value - ref_value) / max(abs(ref_value), 1e-30)
    # Rounds: as many as asked, fewer if one round is so slow that they would exceed max_seconds.
    start = time.perf_counter()
    for candidate in candidates.values():
        candidate.call()
    round_seconds = time.perf_counter() - start
    if max_seconds is not None and round_seconds * rounds > max_seconds:
        rounds = max(5, int(max_seconds / round_seconds))
    log(f"[{batch}x{classes}] {len(candidates)} candidates, {rounds} interleaved rounds ...")
    timings = _timing.interleaved_timings(
        {name: c.call for name, c in candidates.items()}, rounds=rounds, seed=seed
    )
    stats = {name: c.stats for name, c in candidates.items() if c.stats is not None}
    return SizeResult(batch, classes, rounds, timings, stats, grad_error, value_error)


# ------------------------------------------------------------------------------------------------
# Report


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _mb(num_bytes: int) -> str:
    return "—" if num_bytes < 0 else f"{num_bytes / 2**20:.1f}"


def main_table(result: SizeResult) -> str:
    rows = []
    for name, timing in result.timings.items():
        if name in _BREAKDOWN_NAMES:
            continue
        stats = result.stats.get(name)
        check = (
            f"{result.grad_error[name]:.0e} / {result.value_error[name]:.0e}"
            if name in result.grad_error
            else "—"
        )
        rows.append(
            [
                f"**{name}**" if name == OURS else name,
                _ms(timing.median),
                f"{result.ratio(name):.2f}",
                f"{timing.spread:.0%}",
                _mb(stats.temp_bytes) if stats else "—",
                stats.transcendental_summary() if stats else "—",
                stats.elementwise_ops if stats else "—",
                stats.fusions if stats else "—",
                f"{stats.arrays_read} / {stats.arrays_written}" if stats else "—",
                check,
            ]
        )
    headers = [
        "candidate (value and gradient)",
        "median ms",
        "× optax BCE",
        "IQR/median",
        "XLA temp MiB",
        "transcendentals / element",
        "other ops / element",
        "fusions",
        "B×K arrays read / written",
        "Δgrad / Δloss vs ours",
    ]
    return _timing.markdown_table(headers, rows)


_BREAKDOWN_NAMES = (
    VALUE_ONLY,
    VALUE_ELEMENTWISE,
    GRAD_ONLY,
    OPTAX_BCE_VALUE_ONLY,
    FLOOR_SUM,
    FLOOR_PASS,
)


def breakdown_table(result: SizeResult) -> str | None:
    names = [name for name in _BREAKDOWN_NAMES if name in result.timings]
    if not names:
        return None
    rows = []
    for name in [OURS, *names]:
        timing = result.timings[name]
        stats = result.stats[name]
        rows.append(
            [
                name,
                _ms(timing.median),
                f"{result.ratio(name):.2f}",
                f"{timing.median / result.elements * 1e9:.2f}",
                stats.fusions,
                f"{stats.arrays_read} / {stats.arrays_written}",
            ]
        )
    headers = ["part", "median ms", "× optax BCE (value and grad)", "ns / element", "fusions"]
    headers.append("B×K arrays read / written")
    return _timing.markdown_table(headers, rows)


def goals(results: Sequence[SizeResult]) -> str:
    """The loss kernel's goals, one column per size: ✅ met, ❌ missed, with the measured figure."""

    def mark(ok: bool, text: str) -> str:
        return ("✅ " if ok else "❌ ") + text

    rows = []
    checks: list[tuple[str, Callable[[SizeResult], str | None]]] = [
        (
            "static γ ≤ 1.5× optax BCE",
            lambda r: mark(r.ratio(OURS) <= 1.5, f"{r.ratio(OURS):.2f}×"),
        ),
        (
            "traced γ− ≤ 2.0× optax BCE",
            lambda r: mark(r.ratio(OURS_TRACED) <= 2.0, f"{r.ratio(OURS_TRACED):.2f}×"),
        ),
        (
            "not slower than autodiff of the same formula (log-space / official)",
            lambda r: mark(
                r.ratio(OURS, AUTODIFF_LOG) <= 1.0 and r.ratio(OURS, AUTODIFF_OFFICIAL) <= 1.0,
                f"{r.ratio(OURS, AUTODIFF_LOG):.2f}× / {r.ratio(OURS, AUTODIFF_OFFICIAL):.2f}×",
            ),
        ),
        (
            "≥ 2× faster than PyTorch (full / detached vs ours in the same mode)",
            lambda r: (
                None
                if TORCH not in r.timings
                else mark(
                    r.ratio(TORCH, OURS) >= 2.0 and r.ratio(TORCH_DETACHED, OURS_DETACHED) >= 2.0,
                    f"{r.ratio(TORCH, OURS):.1f}× / {r.ratio(TORCH_DETACHED, OURS_DETACHED):.1f}×",
                )
            ),
        ),
        (
            "XLA temp memory ≤ autodiff's (ours / log-space / official, MiB)",
            lambda r: mark(
                r.stats[OURS].temp_bytes
                <= min(r.stats[AUTODIFF_LOG].temp_bytes, r.stats[AUTODIFF_OFFICIAL].temp_bytes),
                f"{_mb(r.stats[OURS].temp_bytes)} / {_mb(r.stats[AUTODIFF_LOG].temp_bytes)} / "
                f"{_mb(r.stats[AUTODIFF_OFFICIAL].temp_bytes)}",
            ),
        ),
    ]
    for goal, check in checks:
        rows.append([goal, *((check(r) or "torch not installed") for r in results)])
    headers = ["goal", *(f"{r.batch}×{r.classes}" for r in results)]
    return _timing.markdown_table(headers, rows, align="l" * len(headers))
