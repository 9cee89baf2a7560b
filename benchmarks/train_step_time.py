"""Train-step time per loss: the engine's jitted train step, one program per loss, interleaved.

BCE, ASL with static γ (γ+ = 0, γ− = 4, m = 0.05), ASL with the adaptive γ− (traced from the
state, updated from Δp every step), ASL with detached focusing weights and the focal loss (γ = 2).
Every program gets the same initial state and the same batches; compilation is excluded. For the
CNN the step is also cut into its parts (augmentation, forward, backward, optimizer/EMA) and the
loss alone is timed on the step's logits, in the same rounds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from asl_jax.training.config import Config
from benchmarks import _timing
from benchmarks._train_common import (
    _PARTS,
    ASL_ADAPTIVE,
    ASL_STATIC,
    BCE,
    LOSS_ALONE_ASL,
    LOSS_ALONE_BCE,
    LOSS_SETTINGS,
    PART_AUGMENT,
    PART_BACKWARD,
    PART_FORWARD,
    BenchModel,
    _compile_train,
    _flops,
    _ms,
    _program_stats,
    _single_device_mesh,
    _Stepper,
    _take_batches,
    make_config,
    programs_for,
)


@dataclasses.dataclass
class StepResult:
    """Train-step timings of one model: one `Timing` per loss (and per part of the step)."""

    spec: BenchModel
    rounds: int
    timings: dict[str, _timing.Timing]
    compile_seconds: dict[str, float]
    flops: dict[str, float | None]
    program_stats: dict[str, tuple[int | None, float | None]]  # (fusions, XLA temp bytes)
    num_classes: int
    final_gamma_neg: float | None  # the adaptive run's γ− after the timed steps
    reference: str = ASL_STATIC  # the loss whose step the breakdown cuts into parts

    def ratio(self, name: str, baseline: str = BCE) -> float:
        """Median step time of `name` over that of `baseline`."""
        return self.timings[name].median / self.timings[baseline].median

    def paired_ratio(self, name: str, baseline: str = BCE) -> tuple[float, float, float]:
        """Median and quartiles of the per-round ratios (same round = same machine state)."""
        ratios = [
            a / b
            for a, b in zip(self.timings[name].samples, self.timings[baseline].samples, strict=True)
        ]
        t = _timing.Timing(name, tuple(ratios), 1)
        return t.median, t.quantile(0.25), t.quantile(0.75)


def _breakdown_candidates(
    config: Config, state: Any, batch: dict, options: dict | None = None
) -> dict[str, Callable[[], object]]:
    """Cumulative sub-programs of the train step (the step's own code, cut after each part)."""
    from asl_jax.training.step import augmented_images, known_labels, loss_and_logits

    augment, reference = config.augment, config.loss

    def images_of(s: Any, b: dict) -> jax.Array:
        return augmented_images(s, b, augment)

    def forward(s: Any, b: dict) -> Any:
        logits, updates = s.apply_fn(
            {"params": s.params, "batch_stats": s.batch_stats},
            images_of(s, b),
            train=True,
            mutable=["batch_stats"],
        )
        return logits.astype(jnp.float32), updates

    def value_and_grad(s: Any, b: dict) -> Any:
        images = images_of(s, b)
        labels, where = known_labels(b)

        def fn(params: Any) -> Any:
            return loss_and_logits(
                params, s, images, labels, where, loss=reference, gamma_neg=reference.gamma_neg
            )

        return jax.value_and_grad(fn, has_aux=True)(s.params)

    def jit(fn: Callable) -> Callable:
        return jax.jit(fn, compiler_options=options)

    aug = jit(images_of)
    fwd = jit(forward)
    grad = jit(value_and_grad)
    return {
        PART_AUGMENT: lambda: jax.block_until_ready(aug(state, batch)),
        PART_FORWARD: lambda: jax.block_until_ready(fwd(state, batch)),
        PART_BACKWARD: lambda: jax.block_until_ready(grad(state, batch)),
    }


def _loss_candidates(
    labels: jax.Array, *, seed: int = 0, options: dict | None = None
) -> dict[str, Callable[[], object]]:
    """The train step's loss alone (ASL static and BCE, value and gradient) on [B, K] logits."""
    from asl_jax.losses import reduce_loss
    from asl_jax.training.loss_registry import LossConfig
    from asl_jax.training.step import elementwise_loss

    asl = LossConfig(**LOSS_SETTINGS[ASL_STATIC])
    bce = LossConfig(**LOSS_SETTINGS[BCE])
    labels = jnp.asarray(labels, jnp.float32)
    # Logits of a network early in training: mostly negative, spread out (as in the loss bench).
    logits = jax.random.normal(jax.random.key(seed), labels.shape) * 3.0 - 2.0

    def program(loss: Any) -> Callable[[], object]:
        fn = jax.jit(
            jax.value_and_grad(
                lambda z, y: reduce_loss(elementwise_loss(z, y, loss, loss.gamma_neg), "batchmean")
            ),
            compiler_options=options,
        )
        return lambda: jax.block_until_ready(fn(logits, labels))

    return {LOSS_ALONE_ASL: program(asl), LOSS_ALONE_BCE: program(bce)}


def run_step_timings(
    spec: BenchModel,
    *,
    losses: Sequence[str],
    rounds: int,
    max_seconds: float | None = None,
    breakdown: bool | None = None,
    reference: str = ASL_STATIC,
    cache_dir: str = "",
    seed: int = 0,
    num_batches: int = 4,
    compiler_options: dict | None = None,
    log: Callable[[str], None] = print,
) -> StepResult:
    """Times the jitted train step of every loss in `losses` on `spec`, interleaved.

    Args:
      spec: model and sizes.
      losses: names from `LOSS_SETTINGS` (BCE is added when missing: it is the baseline).
      rounds: interleaved rounds (fewer, at least 5, when they would exceed `max_seconds`).
      max_seconds: time budget of the timed rounds.
      breakdown: also time the parts of the step (default: `spec.breakdown`).
      reference: the loss whose step the breakdown cuts into parts (timed too).
      cache_dir: where the shapes dataset is cached ("" = the default cache).
      seed: seed of the initial state, the batches and the order of the calls.
      num_batches: distinct batches the steps cycle over.
      compiler_options: XLA options of every program (`FAST_COMPILE` for the smoke test).
      log: progress messages.

    Returns:
      A `StepResult`.
    """
    from asl_jax.data import create_source
    from asl_jax.training import shard_batch

    do_breakdown = breakdown if breakdown is not None else spec.breakdown
    names = list(dict.fromkeys([BCE, *losses, *([reference] if do_breakdown else [])]))
    mesh = _single_device_mesh()
    base = make_config(spec, LOSS_SETTINGS[ASL_STATIC], cache_dir=cache_dir)
    source = create_source(base.data, seed=seed)
    batches = [shard_batch(b, mesh) for b in _take_batches(source, base, num_batches)]
    candidates: dict[str, Callable[[], object]] = {}
    compile_seconds: dict[str, float] = {}
    flops: dict[str, float | None] = {}
    program_stats: dict[str, tuple[int | None, float | None]] = {}
    estimate = 0.0
    for name in names:
        config = make_config(spec, LOSS_SETTINGS[name], cache_dir=cache_dir)
        programs = programs_for(config, source, spec, mesh)
        # The same key for every loss: the same initial parameters (γ− = 4 where it is used).
        state = programs.init(jax.random.key(seed))
        start = time.perf_counter()
        train, compiled = _compile_train(programs, state, batches[0], compiler_options)
        compile_seconds[name] = time.perf_counter() - start
        flops[name] = _flops(compiled)
        program_stats[name] = _program_stats(compiled)
        stepper = _Stepper(train, state, batches)
        stepper()  # first call: not timed (buffers, caches)
        start = time.perf_counter()
        stepper()
        estimate += time.perf_counter() - start
        candidates[name] = stepper
        log(f"  {spec.key} / {name}: compiled in {compile_seconds[name]:.1f} s")
    extra = _loss_candidates(batches[0]["labels"], seed=seed, options=compiler_options)
    if do_breakdown:
        config = make_config(spec, LOSS_SETTINGS[reference], cache_dir=cache_dir)
        programs = programs_for(config, source, spec, mesh)
        state = programs.init(jax.random.key(seed))
        extra.update(_breakdown_candidates(config, state, batches[0], compiler_options))
    for fn in extra.values():
        fn()  # compile
        start = time.perf_counter()
        fn()
        estimate += time.perf_counter() - start
    candidates.update(extra)
    if max_seconds is not None and estimate * rounds > max_seconds:
        rounds = min(rounds, max(5, int(max_seconds / estimate)))
    log(f"  {spec.key}: {rounds} interleaved rounds of ~{estimate:.1f} s")
    timings = _timing.interleaved_timings(candidates, rounds=rounds, warmup=1, seed=seed)
    adaptive = candidates.get(ASL_ADAPTIVE)
    final_gamma = float(adaptive.state.gamma_neg) if isinstance(adaptive, _Stepper) else None
    return StepResult(
        spec=spec,
        rounds=rounds,
        timings=timings,
        compile_seconds=compile_seconds,
        flops=flops,
        program_stats=program_stats,
        num_classes=source.num_classes,
        final_gamma_neg=final_gamma,
        reference=reference,
    )


def step_table(result: StepResult) -> str:
    """One row per loss: median step time, noise, ratios to BCE, XLA's FLOPs, compile time."""
    rows = []
    for name in LOSS_SETTINGS:
        if name not in result.timings:
            continue
        timing = result.timings[name]
        median, q1, q3 = result.paired_ratio(name)
        flops = result.flops.get(name)
        fusions, temp = result.program_stats.get(name, (None, None))
        rows.append(
            [
                f"**{name}**" if name in (ASL_STATIC, ASL_ADAPTIVE) else name,
                _ms(timing.median),
                f"{timing.spread:.0%}",
                f"{result.ratio(name):.3f}",
                f"{median:.3f} ({q1:.3f}–{q3:.3f})",
                f"{flops / 1e9:.2f}" if flops else "—",
                f"{flops / timing.median / 1e9:.1f}" if flops else "—",
                fusions if fusions is not None else "—",
                f"{temp / 2**20:.1f}" if temp is not None else "—",
                f"{result.compile_seconds[name]:.1f}",
            ]
        )
    headers = [
        "loss (whole train step)",
        "median ms",
        "IQR/median",
        "× BCE (ratio of medians)",
        "× BCE per round: median (IQR)",
        "XLA GFLOP / step",
        "GFLOP/s",
        "fusions",
        "XLA temp MiB",
        "compile s",
    ]
    return _timing.markdown_table(headers, rows)


def breakdown_rows(result: StepResult) -> list[tuple[str, float, float]] | None:
    """(part, cumulative seconds, marginal seconds) of the reference step, from the breakdown."""
    ref = result.reference
    if not all(name in result.timings for name in (*_PARTS, ref)):
        return None
    t = {name: result.timings[name].median for name in (*_PARTS, ref)}
    return [
        ("augmentation (uint8 → float, flip, Cutout)", t[PART_AUGMENT], t[PART_AUGMENT]),
        ("forward (train-mode batch norm)", t[PART_FORWARD], t[PART_FORWARD] - t[PART_AUGMENT]),
        ("backward (loss + gradient)", t[PART_BACKWARD], t[PART_BACKWARD] - t[PART_FORWARD]),
        (
            "optimizer (Adam, weight decay), EMA, Δp statistics, non-finite guard",
            t[ref],
            t[ref] - t[PART_BACKWARD],
        ),
    ]


def breakdown_table(result: StepResult) -> str | None:
    """The parts of the reference step (None when the breakdown was not timed)."""
    rows_ = breakdown_rows(result)
    if rows_ is None:
        return None
    step = result.timings[result.reference].median
    rows = [
        [part, _ms(cumulative), _ms(marginal), f"{marginal / step:.0%}"]
        for part, cumulative, marginal in rows_
    ]
    headers = [f"part of the {result.reference} step", "cumulative ms", "part ms", "share"]
    return _timing.markdown_table(headers, rows)


def goals(results: Sequence[StepResult], limit: float = 1.05) -> list[tuple[str, str, bool, str]]:
    """(model, loss, met, figure) for the goal: the ASL step within `limit` × the BCE step."""
    out = []
    for result in results:
        for name in (ASL_STATIC, ASL_ADAPTIVE):
            if name in result.timings:
                ratio = result.ratio(name)
                median, q1, q3 = result.paired_ratio(name)
                figure = f"{ratio:.3f}× (per round {median:.3f}×, IQR {q1:.3f}–{q3:.3f})"
                out.append((result.spec.label, name, ratio <= limit, figure))
    return out


def goals_table(results: Sequence[StepResult]) -> str:
    """The goals (the ASL step within 5% of BCE), ✅ met or ❌ missed, with the measured ratio."""
    rows = [
        [model, f"{name} ≤ 1.05× BCE", ("✅ " if ok else "❌ ") + figure]
        for model, name, ok, figure in goals(results)
    ]
    return _timing.markdown_table(["model", "goal", "measured"], rows, align="lll")
