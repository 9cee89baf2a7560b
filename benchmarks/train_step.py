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
3. **1 vs 8 simulated devices** (a correctness check of data parallelism, not a speed claim on
   2 cores): in a subprocess with ``jax_num_cpu_devices=8``, the same steps of adaptive ASL on a
   1-device and an 8-device mesh; max |Δ| of the loss and γ− per step.

Usage (from the repository root)::

    python -m benchmarks.train_step                       # everything, writes BENCHMARKS.md
    python -m benchmarks.train_step --rounds 40 --models cnn --output ''
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from asl_jax.adaptive import DEFAULT_STEP_SIZE
from benchmarks import _timing

__all__ = [
    "LOSSES",
    "MODELS",
    "ScalingResult",
    "StepResult",
    "ThroughputResult",
    "main",
    "make_config",
    "render_markdown",
    "run_scaling",
    "run_step_timings",
    "run_throughput",
]

SECTION = "train_step"
ROOT = Path(__file__).resolve().parents[1]
# The train step's learning-rate schedule needs a length; it does not change the step's cost.
TOTAL_STEPS = 10_000
_SCALING_MARKER = "SCALING_JSON "
# `--tiny` (the smoke test) compiles without XLA's expensive CPU optimisations: about a third
# less compile time, which is nearly all of a tiny run. Timed runs never use it.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# Loss configurations (overrides of the config's `loss` block), in table order; ratios are to BCE.
BCE = "BCE"
ASL_STATIC = "ASL, static γ"
ASL_ADAPTIVE = "ASL, adaptive γ−"
ASL_DETACHED = "ASL, detached weights"
FOCAL = "focal (γ = 2)"
_ASL = {"name": "asl", "gamma_pos": 0.0, "gamma_neg": 4.0, "clip": 0.05}
LOSSES: dict[str, dict[str, Any]] = {
    BCE: {"name": "bce"},
    ASL_STATIC: dict(_ASL),
    ASL_ADAPTIVE: {**_ASL, "adaptive": True},
    ASL_DETACHED: {**_ASL, "detach_focal_weight": True},
    FOCAL: {"name": "focal", "focal_gamma": 2.0},
}
LOSS_KEYS = {
    "bce": BCE,
    "asl": ASL_STATIC,
    "asl_adaptive": ASL_ADAPTIVE,
    "asl_detached": ASL_DETACHED,
    "focal": FOCAL,
}
# Step-breakdown candidates (cumulative programs; CNN only by default) and the loss alone.
PART_AUGMENT = "augmentation"
PART_FORWARD = "augmentation + forward"
PART_BACKWARD = "augmentation + forward + backward"
LOSS_ALONE_ASL = "loss alone: ASL value and grad"
LOSS_ALONE_BCE = "loss alone: BCE value and grad"
_PARTS = (PART_AUGMENT, PART_FORWARD, PART_BACKWARD)
_LOSS_ALONE = (LOSS_ALONE_ASL, LOSS_ALONE_BCE)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model and the input sizes it is benchmarked at."""

    key: str
    label: str
    model: str
    width: int  # config.model.width (0 = the model's default)
    image_size: int
    batch_size: int
    num_train: int  # shapes images generated for it (the default config's 8192 for the CNN)
    num_val: int
    breakdown: bool  # also time the parts of the step


MODELS: dict[str, ModelSpec] = {
    "cnn": ModelSpec("cnn", "small CNN (default config)", "cnn", 16, 32, 64, 8192, 2048, True),
    "resnet18": ModelSpec("resnet18", "ResNet-18", "resnet18", 0, 64, 32, 512, 64, False),
}
# Tiny sizes for the smoke test (`--tiny`): the same code paths in seconds.
TINY_MODELS: dict[str, ModelSpec] = {
    "cnn": ModelSpec("cnn", "small CNN (tiny)", "cnn", 4, 16, 8, 64, 8, True),
    "resnet18": ModelSpec("resnet18", "ResNet-18 (tiny)", "resnet18", 4, 16, 8, 32, 8, False),
}


def make_config(
    spec: ModelSpec, loss: dict[str, Any], *, cache_dir: str = ""
) -> ml_collections.ConfigDict:
    """The default config (`train/configs/default.py`) with `spec`'s model and sizes and `loss`."""
    from train.configs import default

    config = default.get_config()
    config.model.name = spec.model
    config.model.width = spec.width
    config.data.image_size = spec.image_size
    config.data.num_train = spec.num_train
    config.data.num_val = spec.num_val
    config.data.cache_dir = cache_dir
    config.batch_size = spec.batch_size
    config.progress_bar = False
    for field, value in loss.items():
        config.loss[field] = value
    return config


def _single_device_mesh() -> jax.sharding.Mesh:
    from asl_jax.training import make_mesh

    # The test suite runs with 8 simulated CPU devices: a 1-device mesh must be explicit.
    return make_mesh(jax.devices()[:1])


def _take_batches(source: Any, config: Any, count: int, *, epoch: int = 0) -> list[dict]:
    """The first `count` training batches of `config` (host NumPy), cycling over epochs."""
    out: list[dict] = []
    while len(out) < count:
        for batch in source.batches(
            "train",
            batch_size=int(config.batch_size),
            seed=int(config.seed),
            epoch=epoch,
            shuffle=True,
            drop_remainder=True,
        ):
            out.append(batch)
            if len(out) == count:
                break
        epoch += 1
    return out


def _compile_train(
    programs: Any, state: Any, batch: dict, options: dict | None
) -> tuple[Callable, Any]:
    """Compiles ``programs.train`` for these shapes; returns (what to call, the executable).

    Without options the call goes through ``programs.train`` itself (the ahead-of-time
    compilation fills its cache); with options through the executable compiled with them.
    """
    compiled = programs.train.lower(state, batch).compile(options)
    return (compiled if options else programs.train), compiled


_FUSION = re.compile(r"=\s*\S+\s+fusion\(")


def _program_stats(compiled: Any) -> tuple[int | None, float | None]:
    """(fusions in the entry computation, XLA's temporary bytes) of a compiled program."""
    try:
        text = compiled.as_text()
        entry = text[text.index("ENTRY") :]
        fusions = len(_FUSION.findall(entry))
    except (ValueError, AttributeError):
        fusions = None
    try:
        temp = float(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # not every backend implements it
        temp = None
    return fusions, temp


def _flops(compiled: Any) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    flops = cost.get("flops") if cost else None
    return float(flops) if flops else None


class _Stepper:
    """Calls a jitted train step on its own state, threaded through (the step donates it)."""

    def __init__(self, train: Callable, state: Any, batches: Sequence[dict]) -> None:
        self.train, self.state, self.batches, self.calls = train, state, batches, 0

    def __call__(self) -> None:
        batch = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        self.state, metrics = self.train(self.state, batch)
        jax.block_until_ready((self.state, metrics))


# ------------------------------------------------------------------------------------------------
# 1. Train-step time per loss


@dataclasses.dataclass
class StepResult:
    """Train-step timings of one model: one `Timing` per loss (and per part of the step)."""

    spec: ModelSpec
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
    config: Any, state: Any, batch: dict, options: dict | None = None
) -> dict[str, Callable[[], object]]:
    """Cumulative sub-programs of the train step (the step's own code, cut after each part)."""
    from asl_jax.data import augment_images
    from asl_jax.losses import reduce_loss
    from asl_jax.training import AugmentConfig, LossConfig
    from asl_jax.training.step import elementwise_loss

    augment = AugmentConfig.from_config(config.augment)
    reference = LossConfig.from_config(config.loss)

    def images_of(s: Any, b: dict) -> jax.Array:
        key = jax.random.fold_in(s.key, s.step)
        return augment_images(
            key,
            b["image"],
            flip=augment.flip,
            cutout=augment.cutout,
            randaugment=augment.randaugment,
        )

    def forward(params: Any, s: Any, b: dict) -> tuple[jax.Array, Any]:
        logits, updates = s.apply_fn(
            {"params": params, "batch_stats": s.batch_stats},
            images_of(s, b),
            train=True,
            mutable=["batch_stats"],
        )
        return logits.astype(jnp.float32), updates

    def value_and_grad(s: Any, b: dict) -> Any:
        def fn(params: Any) -> tuple[jax.Array, Any]:
            logits, updates = forward(params, s, b)
            value = elementwise_loss(logits, b["labels"], reference, reference.gamma_neg)
            return reduce_loss(value, reference.reduction), updates

        return jax.value_and_grad(fn, has_aux=True)(s.params)

    def jit(fn: Callable) -> Callable:
        return jax.jit(fn, compiler_options=options)

    aug = jit(images_of)
    fwd = jit(lambda s, b: forward(s.params, s, b))
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
    from asl_jax.training import LossConfig
    from asl_jax.training.step import elementwise_loss

    asl = LossConfig(**LOSSES[ASL_STATIC])
    bce = LossConfig(**LOSSES[BCE])
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
    spec: ModelSpec,
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
      losses: names from `LOSSES` (BCE is added when missing: it is the baseline).
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
    from asl_jax.training import build_programs, shard_batch

    do_breakdown = breakdown if breakdown is not None else spec.breakdown
    names = list(dict.fromkeys([BCE, *losses, *([reference] if do_breakdown else [])]))
    mesh = _single_device_mesh()
    base = make_config(spec, LOSSES[ASL_STATIC], cache_dir=cache_dir)
    source = create_source(base.data, seed=seed)
    batches = [shard_batch(b, mesh) for b in _take_batches(source, base, num_batches)]
    candidates: dict[str, Callable[[], object]] = {}
    compile_seconds: dict[str, float] = {}
    flops: dict[str, float | None] = {}
    program_stats: dict[str, tuple[int | None, float | None]] = {}
    estimate = 0.0
    for name in names:
        config = make_config(spec, LOSSES[name], cache_dir=cache_dir)
        programs = build_programs(
            config,
            num_classes=source.num_classes,
            image_size=spec.image_size,
            total_steps=TOTAL_STEPS,
            mesh=mesh,
        )
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
        config = make_config(spec, LOSSES[reference], cache_dir=cache_dir)
        programs = build_programs(
            config,
            num_classes=source.num_classes,
            image_size=spec.image_size,
            total_steps=TOTAL_STEPS,
            mesh=mesh,
        )
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


# ------------------------------------------------------------------------------------------------
# 2. Images/s: input pipeline alone vs the training loop

SHAPES_PIPELINE = "shapes pipeline alone (`source.batches`)"
STEP_ALONE = "train step alone (device-resident batches)"
SHAPES_LOOP = "train loop on shapes (batches → shard_batch → step)"
FOLDER_MEMORY = "folder pipeline alone, decoded images in memory"
FOLDER_PIPELINE = "folder pipeline alone, JPEG decode per batch (streaming)"
FOLDER_LOOP = "train loop on folder, streaming (batches → shard_batch → step)"


@dataclasses.dataclass
class ThroughputResult:
    """Images/s of the pipelines and the loop; each sample covers `steps[name]` batches."""

    spec: ModelSpec
    rounds: int
    batch_size: int
    timings: dict[str, _timing.Timing]
    steps: dict[str, int]
    folder: dict[str, Any] | None  # what the folder dataset was (None when skipped)
    loss: str = ASL_STATIC

    def images_per_second(self, name: str) -> float:
        """Training images per second of candidate `name` (median sample)."""
        return self.steps[name] * self.batch_size / self.timings[name].median

    def ms_per_batch(self, name: str) -> float:
        """Milliseconds per batch of candidate `name` (median sample)."""
        return self.timings[name].median / self.steps[name] * 1e3


def _write_folder_dataset(
    directory: str, source: Any, *, num_train: int, num_val: int, pixels: int
) -> None:
    """JPEGs (shapes images upscaled to `pixels`) with train.csv / val.csv / classes.txt."""
    from PIL import Image

    images, labels = source.gather(
        "train", np.arange(num_train + num_val) % source.num_examples("train")
    )
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    rows = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = f"images/{i:05d}.jpg"
        Image.fromarray(image).resize((pixels, pixels), Image.Resampling.BILINEAR).save(
            os.path.join(directory, name), quality=90
        )
        rows.append(f"{name},{' '.join(source.class_names[k] for k in np.flatnonzero(label))}")
    with open(os.path.join(directory, "classes.txt"), "w") as f:
        f.writelines(f"{c}\n" for c in source.class_names)  # fixes K whatever the subset holds
    for split, part in (("train", rows[:num_train]), ("val", rows[num_train:])):
        with open(os.path.join(directory, f"{split}.csv"), "w") as f:
            f.write("image,labels\n" + "".join(f"{row}\n" for row in part))


def run_throughput(
    spec: ModelSpec,
    *,
    rounds: int,
    steps: int = 16,
    folder_images: int = 512,
    folder_pixels: int = 128,
    loss: str = ASL_STATIC,
    cache_dir: str = "",
    seed: int = 0,
    compiler_options: dict | None = None,
    log: Callable[[str], None] = print,
) -> ThroughputResult:
    """Images/s of the input pipelines alone, the train step alone and the training loop.

    The loop is the engine's inner loop without logging, evaluation and checkpoints: for each
    batch of `source.batches(...)`, ``state, metrics = train(state, shard_batch(batch, mesh))``,
    dispatched asynchronously, blocked once at the end of the sample (as the engine blocks only
    when it logs). Every sample starts a new epoch's iterator (a new shuffle).

    Args:
      spec: the model (the default config's CNN).
      rounds: interleaved rounds.
      steps: batches per sample of the shapes candidates.
      folder_images: JPEGs of the folder dataset (train split; 0 skips the folder candidates).
      folder_pixels: side of the JPEGs (they are resized to `spec.image_size` when decoded).
      loss: the loss of the train step (the default config's: ASL with static γ).
      cache_dir: shapes cache.
      seed: seed of the state, the data order and the call order.
      compiler_options: XLA options of the train step (`FAST_COMPILE` for the smoke test).
      log: progress messages.
    """
    from asl_jax.data import create_source, steps_per_epoch
    from asl_jax.data.folder import FolderSource
    from asl_jax.training import build_programs, shard_batch

    mesh = _single_device_mesh()
    config = make_config(spec, LOSSES[loss], cache_dir=cache_dir)
    source = create_source(config.data, seed=seed)
    programs = build_programs(
        config,
        num_classes=source.num_classes,
        image_size=spec.image_size,
        total_steps=TOTAL_STEPS,
        mesh=mesh,
    )
    batch_size = int(config.batch_size)
    epochs = iter(range(1, 1 << 30))

    def batches_of(src: Any, count: int) -> Iterator[dict]:
        # A new epoch per sample; cycles when an epoch has fewer than `count` batches.
        remaining = count
        while remaining:
            for batch in src.batches(
                "train",
                batch_size=batch_size,
                seed=seed,
                epoch=next(epochs),
                shuffle=True,
                drop_remainder=True,
            ):
                yield batch
                remaining -= 1
                if not remaining:
                    return

    def pipeline(src: Any, count: int) -> Callable[[], None]:
        def run() -> None:
            for _ in batches_of(src, count):
                pass

        return run

    class Loop:
        def __init__(self, src: Any, count: int) -> None:
            self.src, self.count = src, count
            self.state = programs.init(jax.random.key(seed))

        def __call__(self) -> None:
            metrics = None
            for batch in batches_of(self.src, self.count):
                self.state, metrics = train(self.state, shard_batch(batch, mesh))
            jax.block_until_ready((self.state, metrics))

    resident = [shard_batch(b, mesh) for b in _take_batches(source, config, 4)]
    train, _ = _compile_train(
        programs, programs.init(jax.random.key(seed)), resident[0], compiler_options
    )
    alone = _Stepper(train, programs.init(jax.random.key(seed)), resident)

    def step_alone() -> None:
        # Dispatched back to back like the loop, blocked at the end.
        for _ in range(steps):
            batch = resident[alone.calls % len(resident)]
            alone.calls += 1
            alone.state, metrics = train(alone.state, batch)
        jax.block_until_ready((alone.state, metrics))

    candidates: dict[str, Callable[[], object]] = {
        SHAPES_PIPELINE: pipeline(source, steps),
        STEP_ALONE: step_alone,
        SHAPES_LOOP: Loop(source, steps),
    }
    counts = dict.fromkeys(candidates, steps)
    folder_info = None
    tmp = None
    if folder_images:
        tmp = tempfile.TemporaryDirectory(prefix="asl_jax_bench_folder_")
        num_val = max(8, folder_images // 8)
        start = time.perf_counter()
        _write_folder_dataset(
            tmp.name, source, num_train=folder_images, num_val=num_val, pixels=folder_pixels
        )
        written = time.perf_counter() - start
        start = time.perf_counter()
        streaming = FolderSource(tmp.name, image_size=spec.image_size, memory_limit_bytes=0)
        check_seconds = time.perf_counter() - start
        in_memory = FolderSource(tmp.name, image_size=spec.image_size)
        per_epoch = steps_per_epoch(streaming, batch_size)
        if per_epoch < 1:
            raise ValueError(
                f"--folder-images={folder_images} is smaller than one batch ({batch_size})."
            )
        candidates[FOLDER_MEMORY] = pipeline(in_memory, per_epoch)
        candidates[FOLDER_PIPELINE] = pipeline(streaming, per_epoch)
        candidates[FOLDER_LOOP] = Loop(streaming, per_epoch)
        counts.update(dict.fromkeys((FOLDER_MEMORY, FOLDER_PIPELINE, FOLDER_LOOP), per_epoch))
        folder_info = {
            "images": folder_images + num_val,
            "train_images": folder_images,
            "pixels": folder_pixels,
            "bytes": sum(p.stat().st_size for p in Path(tmp.name, "images").iterdir()),
            "write_seconds": written,
            # Construction decodes every image once (its corruption check): a decode rate.
            "check_seconds": check_seconds,
            "workers": streaming._workers,
            "prefetch": streaming.prefetch,
        }
    log(f"  throughput: {rounds} interleaved rounds")
    try:
        timings = _timing.interleaved_timings(candidates, rounds=rounds, warmup=1, seed=seed)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return ThroughputResult(spec, rounds, batch_size, timings, counts, folder_info, loss)


# ------------------------------------------------------------------------------------------------
# 3. 1 vs 8 simulated devices (subprocess)


@dataclasses.dataclass
class ScalingResult:
    """The same steps on a 1-device and an N-device mesh."""

    loss: str
    steps: int
    batch_size: int
    devices: int
    max_abs_loss: float
    max_abs_gamma_neg: float
    max_abs_delta_p: float
    max_abs_param: float
    max_param: float
    loss_first_last: tuple[float, float]
    gamma_neg_first_last: tuple[float, float]
    step_seconds_1: float
    step_seconds_8: float
    wall_seconds: float
    subprocess: bool


def scaling_check(
    spec: ModelSpec,
    *,
    loss: str = ASL_ADAPTIVE,
    steps: int,
    devices: int = 8,
    cache_dir: str = "",
    seed: int = 0,
    compiler_options: dict | None = None,
) -> dict[str, Any]:
    """`steps` train steps on a 1-device and a `devices`-device mesh, in this process.

    Both runs start from the same state (same key) and see the same global batches; the steps
    alternate between the two meshes so that the machine's load hits both alike. The process must
    already have at least `devices` CPU devices.

    Returns:
      The fields of `ScalingResult` but ``wall_seconds`` and ``subprocess``.
    """
    from asl_jax.data import create_source
    from asl_jax.training import build_programs, make_mesh, shard_batch

    available = jax.devices()
    if len(available) < devices:
        raise RuntimeError(
            f"the 1-vs-{devices}-devices check needs {devices} devices, this process has "
            f"{len(available)} (set jax_num_cpu_devices before JAX initialises)"
        )
    config = make_config(spec, LOSSES[loss], cache_dir=cache_dir)
    source = create_source(config.data, seed=seed)
    host_batches = _take_batches(source, config, steps)
    runs: dict[int, dict[str, Any]] = {}
    for n in (1, devices):
        mesh = make_mesh(available[:n])
        programs = build_programs(
            config,
            num_classes=source.num_classes,
            image_size=spec.image_size,
            total_steps=TOTAL_STEPS,
            mesh=mesh,
        )
        batches = [shard_batch(b, mesh) for b in host_batches]
        state = programs.init(jax.random.key(seed))
        train, _ = _compile_train(programs, state, batches[0], compiler_options)
        runs[n] = {
            "train": train,
            "state": state,
            "batches": batches,
            "metrics": [],
            "seconds": [],
        }
    for i in range(steps):
        for run in runs.values():
            start = time.perf_counter()
            run["state"], metrics = run["train"](run["state"], run["batches"][i])
            jax.block_until_ready((run["state"], metrics))
            run["seconds"].append(time.perf_counter() - start)
            run["metrics"].append({k: float(v) for k, v in jax.device_get(metrics).items()})
    one, many = runs[1], runs[devices]

    def max_diff(key: str) -> float:
        pairs = zip(one["metrics"], many["metrics"], strict=True)
        return max(abs(a[key] - b[key]) for a, b in pairs)

    params_1 = jax.tree.leaves(jax.device_get(one["state"].params))
    params_n = jax.tree.leaves(jax.device_get(many["state"].params))
    final_gamma_1 = float(jax.device_get(one["state"].gamma_neg))
    final_gamma_n = float(jax.device_get(many["state"].gamma_neg))
    return {
        "loss": loss,
        "steps": steps,
        "batch_size": spec.batch_size,
        "devices": devices,
        "max_abs_loss": max_diff("loss"),
        # The γ− each step applied, and the final state's (after the last update).
        "max_abs_gamma_neg": max(max_diff("gamma_neg"), abs(final_gamma_1 - final_gamma_n)),
        "max_abs_delta_p": max_diff("delta_p"),
        "max_abs_param": max(
            float(np.max(np.abs(a - b))) for a, b in zip(params_1, params_n, strict=True)
        ),
        "max_param": max(float(np.max(np.abs(a))) for a in params_1),
        "loss_first_last": (one["metrics"][0]["loss"], one["metrics"][-1]["loss"]),
        "gamma_neg_first_last": (one["metrics"][0]["gamma_neg"], final_gamma_1),
        "step_seconds_1": statistics.median(one["seconds"]),
        "step_seconds_8": statistics.median(many["seconds"]),
    }


def _scaling_worker(args: argparse.Namespace) -> None:
    """The subprocess: sets the device count, runs `scaling_check`, prints one JSON line."""
    # Before anything initialises JAX's backend (nothing in this module touches a device at
    # import time).
    jax.config.update("jax_num_cpu_devices", args.devices)
    result = scaling_check(
        _specs(args)["cnn"],
        loss=LOSS_KEYS[args.scaling_loss],
        steps=args.scaling_steps,
        devices=args.devices,
        cache_dir=args.cache_dir,
        seed=args.seed,
        compiler_options=FAST_COMPILE if args.tiny else None,
    )
    print(_SCALING_MARKER + json.dumps(result), flush=True)


def run_scaling(
    *,
    steps: int,
    devices: int = 8,
    loss_key: str = "asl_adaptive",
    tiny: bool = False,
    num_train: int = 0,
    cache_dir: str = "",
    seed: int = 0,
    timeout: float = 900.0,
) -> ScalingResult:
    """The 1-vs-`devices` check, in a fresh Python process with `devices` simulated CPU devices.

    When this process already has that many CPU devices (e.g. under the test suite, which sets
    ``jax_num_cpu_devices=8``), the check runs here instead: same code, no second start-up and
    compilation of the 1-device program.
    """
    spec = _specs(argparse.Namespace(tiny=tiny, num_train=num_train))["cnn"]
    start = time.perf_counter()
    if jax.default_backend() == "cpu" and len(jax.devices()) >= devices:
        data = scaling_check(
            spec,
            loss=LOSS_KEYS[loss_key],
            steps=steps,
            devices=devices,
            cache_dir=cache_dir,
            seed=seed,
            compiler_options=FAST_COMPILE if tiny else None,
        )
        return ScalingResult(**data, wall_seconds=time.perf_counter() - start, subprocess=False)
    command = [
        sys.executable,
        "-m",
        "benchmarks.train_step",
        "--scaling-worker",
        f"--scaling-steps={steps}",
        f"--scaling-loss={loss_key}",
        f"--devices={devices}",
        f"--num-train={num_train}",
        f"--cache-dir={cache_dir}",
        f"--seed={seed}",
    ] + (["--tiny"] if tiny else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # The worker sets the device count itself; an inherited XLA flag would compete with it.
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(
        f for f in flags if not f.startswith("--xla_force_host_platform_device_count")
    )
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith(_SCALING_MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"the 1-vs-{devices}-devices subprocess failed (exit {done.returncode}):\n"
            + done.stderr[-4000:]
        )
    data = json.loads(lines[-1][len(_SCALING_MARKER) :])
    data["loss_first_last"] = tuple(data["loss_first_last"])
    data["gamma_neg_first_last"] = tuple(data["gamma_neg_first_last"])
    return ScalingResult(**data, wall_seconds=wall, subprocess=True)


# ------------------------------------------------------------------------------------------------
# Markdown


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    size = abs(ms)
    if size >= 100:
        return f"{ms:.0f}"
    if size >= 10:
        return f"{ms:.1f}"
    if size >= 0.1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def step_table(result: StepResult) -> str:
    """One row per loss: median step time, noise, ratios to BCE, XLA's FLOPs, compile time."""
    rows = []
    for name in LOSSES:
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


def throughput_table(result: ThroughputResult) -> str:
    """Images/s and ms per batch of the pipelines, the step alone and the loops."""
    rows = []
    for name, timing in result.timings.items():
        rows.append(
            [
                name,
                _rate(result.images_per_second(name)),
                f"{result.ms_per_batch(name):.2f}",
                f"{timing.spread:.0%}",
                result.steps[name],
            ]
        )
    headers = ["what", "images/s", "ms per batch", "IQR/median", "batches per sample"]
    return _timing.markdown_table(headers, rows)


def scaling_table(result: ScalingResult) -> str:
    """Agreement of the 1-device and N-device runs, and their step times."""
    rows = [
        ["max \\|Δ loss\\| over the steps", f"{result.max_abs_loss:.1e}"],
        ["max \\|Δ γ−\\| over the steps (and final state)", f"{result.max_abs_gamma_neg:.1e}"],
        ["max \\|Δ Δp\\| over the steps", f"{result.max_abs_delta_p:.1e}"],
        [
            "max \\|Δ parameter\\| after the steps (largest \\|parameter\\|)",
            f"{result.max_abs_param:.1e} ({result.max_param:.2f})",
        ],
        [
            "loss, first → last step (1 device)",
            f"{result.loss_first_last[0]:.4f} → {result.loss_first_last[1]:.4f}",
        ],
        [
            "γ−, first step → final state (1 device)",
            f"{result.gamma_neg_first_last[0]:.4f} → {result.gamma_neg_first_last[1]:.4f}",
        ],
        [
            f"median step time, 1 / {result.devices} devices (ms)",
            f"{_ms(result.step_seconds_1)} / {_ms(result.step_seconds_8)} "
            f"(ratio {result.step_seconds_8 / result.step_seconds_1:.2f})",
        ],
    ]
    return _timing.markdown_table(["1 vs 8 devices", "value"], rows)


def goals(results: Sequence[StepResult], limit: float = 1.05) -> list[tuple[str, str, bool, str]]:
    """(model, loss, met, figure) for the issue's goal: ASL ≤ `limit` × BCE."""
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
    """The issue's goals, ✅ met or ❌ missed, with the measured ratio."""
    rows = [
        [model, f"{name} ≤ 1.05× BCE", ("✅ " if ok else "❌ ") + figure]
        for model, name, ok, figure in goals(results)
    ]
    return _timing.markdown_table(["model", "goal (issue 7)", "measured"], rows, align="lll")


def analysis(
    steps: Sequence[StepResult],
    throughput: ThroughputResult | None,
    scaling: ScalingResult | None,
) -> list[str]:
    """Findings written from the figures (so that they stay true when the section is rerun)."""
    notes = []
    for result in steps:
        others = [n for n in LOSSES if n in result.timings and n != BCE]
        if not others:
            continue
        paired = {n: result.paired_ratio(n) for n in others}
        figures = ", ".join(f"{n} {paired[n][0]:.3f}×" for n in others)
        # A paired comparison: a difference is consistent when the IQR of the ratios excludes 1.
        consistent = {n: r for n, r in paired.items() if r[1] > 1 or r[2] < 1}
        worst = max(abs(m - 1) for m, _, _ in paired.values())
        text = (
            f"**{result.spec.label}** ({result.spec.image_size} px, batch "
            f"{result.spec.batch_size}, {result.num_classes} classes), per-round ratios to BCE: "
            f"{figures}; every loss within {worst:.1%} of BCE."
        )
        share = None
        if LOSS_ALONE_ASL in result.timings:
            step = result.timings[BCE].median
            asl, bce = result.timings[LOSS_ALONE_ASL].median, result.timings[LOSS_ALONE_BCE].median
            share = asl / step
            text += (
                f" The loss itself (value and gradient on the {result.spec.batch_size}×"
                f"{result.num_classes} logits, timed alone) takes {asl * 1e6:.0f} µs with ASL and "
                f"{bce * 1e6:.0f} µs with BCE, {asl / step:.3%} and {bce / step:.3%} of the step: "
                + (
                    "far below what step-time ratios can resolve, so the paper's \"does not "
                    'increase the training time" holds here.'
                    if share < 0.02
                    else "a visible share of the step."
                )
            )
        if not consistent:
            text += (
                " Every IQR of the per-round ratios contains 1: no difference between the losses "
                "is measurable."
            )
        else:
            listed = ", ".join(
                f"{n} ({m - 1:+.1%}, IQR {q1:.3f}–{q3:.3f})"
                for n, (m, q1, q3) in consistent.items()
            )
            text += (
                f" For {listed} the IQR of the per-round ratios excludes 1: a difference "
                "consistent within this run."
            )
            stats = {result.program_stats.get(n) for n in (BCE, *consistent)}
            if share is not None and share < 0.01 and len(stats) == 1 and None not in stats:
                ((fusions, temp),) = stats
                text += (
                    " It is not the loss: the loss alone is a tiny fraction of the step and the "
                    f"compiled steps are alike ({fusions} fusions and {temp / 2**20:.0f} MiB of "
                    "XLA temporaries each). Differences of a few percent between programs doing "
                    "the same work (where each program's buffers land in memory, the values each "
                    "state takes) are the resolution limit of one run: rerun to see whether the "
                    "sign holds."
                )
        notes.append(text)
    for result in steps:
        rows = breakdown_rows(result)
        if rows is None:
            continue
        step = result.timings[result.reference].median
        shares = {part.split(" (")[0]: marginal / step for part, _, marginal in rows}
        ranked = sorted(shares.items(), key=lambda kv: -kv[1])
        flops = result.flops.get(result.reference)
        rate = (
            f" XLA counts {flops / 1e9:.2f} GFLOP per step ({flops / step / 1e9:.0f} GFLOP/s "
            "achieved)."
            if flops
            else ""
        )
        notes.append(
            f"**What the {result.spec.label} step spends its time on** (CPU): "
            + ", ".join(
                f"{name} {share:.0%}" + (" (below the noise)" if abs(share) < 0.02 else "")
                for name, share in ranked
            )
            + f"; the forward and backward passes (convolutions, batch norm) together "
            f"{shares['forward'] + shares['backward']:.0%}, the backward alone "
            f"{shares['backward'] / max(shares['forward'], 1e-9):.1f}× the forward. (Parts are "
            "cumulative programs differenced, so the small ones carry the noise of the large "
            f"ones.){rate}"
        )
    if throughput is not None:
        t = throughput
        pipe, alone, loop = (
            t.images_per_second(SHAPES_PIPELINE),
            t.images_per_second(STEP_ALONE),
            t.images_per_second(SHAPES_LOOP),
        )
        text = (
            f"**Pipeline vs loop** (default config): the shapes pipeline alone delivers "
            f"{_rate(pipe)} images/s, {pipe / loop:.0f}× what the training loop consumes "
            f"({_rate(loop)} images/s); the loop runs at {loop / alone:.0%} of the train step "
            f"alone ({_rate(alone)} images/s), so the input pipeline is "
            + ("not the bottleneck: the step is." if loop / alone > 0.9 else "a visible cost.")
        )
        if FOLDER_LOOP in t.timings:
            folder_pipe = t.images_per_second(FOLDER_PIPELINE)
            folder_loop = t.images_per_second(FOLDER_LOOP)
            folder = t.folder or {}
            text += (
                f" Decoding {folder.get('pixels')} px JPEGs per batch, the folder pipeline alone "
                f"delivers {_rate(folder_pipe)} images/s ({folder_pipe / loop:.1f}× the loop's "
                f"need) and the loop on it runs at {_rate(folder_loop)} images/s "
                f"({folder_loop / alone:.0%} of the step alone): "
                + (
                    f"the decoding threads take CPU from XLA on the 2 cores (the loop loses "
                    f"{1 - folder_loop / alone:.0%}), but the step still dominates."
                    if folder_loop / alone > 0.8
                    else "on 2 cores the decoding threads compete with XLA's for the CPU; a "
                    "dataset that fits in memory (decoded once) avoids it."
                )
            )
        notes.append(text)
    if scaling is not None:
        notes.append(
            f"**1 vs {scaling.devices} devices**: the same {scaling.steps} steps of {scaling.loss} "
            f"agree to {scaling.max_abs_loss:.0e} in the loss, {scaling.max_abs_delta_p:.0e} in "
            f"Δp, {scaling.max_abs_gamma_neg:.0e} in γ− and {scaling.max_abs_param:.0e} in the "
            "parameters: float32 summation order, since on 8 devices the loss, the batch-norm "
            "moments, the gradients and Δp are all-reduced over the global batch."
            + (
                f" γ− moves by λ·(Δp − target) per step (λ = {DEFAULT_STEP_SIZE}), so a Δp "
                f"difference of {scaling.max_abs_delta_p:.0e} moves it by "
                f"{DEFAULT_STEP_SIZE * scaling.max_abs_delta_p:.0e}, below float32's resolution "
                f"near γ− = 4 ({float(np.spacing(np.float32(4.0))):.1e}): the same γ− on both."
                if scaling.loss == ASL_ADAPTIVE and scaling.max_abs_gamma_neg == 0.0
                else ""
            )
            + f" The step-time ratio ({scaling.devices} devices / 1: "
            f"{scaling.step_seconds_8 / scaling.step_seconds_1:.2f}) says nothing about scaling: "
            f"the {scaling.devices} simulated devices share the 2 cores the single device "
            "already uses, so the ratio only reflects how XLA:CPU spreads the same work over "
            "those cores (one device's intra-op threads vs 8 devices running side by side) "
            "and the cost of partitioning and all-reduces."
        )
    return notes


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
        _timing.machine_markdown(info),
        "How it is measured: one program per loss config, all with the same initial state (same "
        "key) and the same 4 batches, cycled; each program compiled first (not timed) and called "
        "once untimed; then the programs are called round-robin, in a new random order each "
        "round, each call ending with `block_until_ready` on the new state and metrics (the "
        "state is donated, so each program carries its own state forward). BCE is the engine's "
        "`bce` (our `asymmetric_loss` with γ = 0, m = 0, as fast as optax's BCE: see the loss "
        "section). Ratios: of medians, and the median of the per-round ratios with its IQR (the "
        "two programs ran within the same round, so a slow phase of the machine hits both). "
        "**Absolute times are noisy**: 2 cores shared with other jobs (training runs, another "
        "benchmark); compare ratios.",
    ]
    for result in steps:
        spec = result.spec
        width = f"width {spec.width}" if spec.width else "standard width (64)"
        parts.append(
            f"### {spec.label}: {spec.image_size} px, batch {spec.batch_size}, "
            f"{result.num_classes} classes, {width} ({result.rounds} rounds)"
        )
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
        parts.append("### Goals (issue 7)")
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
        parts.append(throughput_table(t))
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
            f"measurement: the {scaling.devices} devices are simulated on 2 shared cores."
        )
        parts.append(scaling_table(scaling))
    notes = analysis(steps, throughput, scaling)
    if notes:
        parts.append("### Analysis")
        parts.append("\n".join(f"- {note}" for note in notes))
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
        "--models", nargs="+", choices=sorted(MODELS), default=list(MODELS), help="models to time"
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
    parser.add_argument(
        "--output",
        default="BENCHMARKS.md",
        help="Markdown file whose 'train_step' section is written ('' to only print)",
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


def _specs(args: argparse.Namespace) -> dict[str, ModelSpec]:
    specs = TINY_MODELS if args.tiny else MODELS
    if args.num_train:
        n = args.num_train
        specs = {
            k: dataclasses.replace(s, num_train=n, num_val=max(8, n // 8)) for k, s in specs.items()
        }
    return specs


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark; returns ``{"steps", "throughput", "scaling", "markdown"}``."""
    args = parse_args(argv)
    if args.scaling_worker:
        _scaling_worker(args)
        return {}
    info = _timing.machine_info(("jax", "jaxlib", "flax", "optax", "numpy", "pillow"))
    command = (
        _timing.command_line("benchmarks.train_step")
        if argv is None
        else ("python -m benchmarks.train_step " + " ".join(argv)).strip()
    )
    print(_timing.machine_markdown(info))
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
    if args.output:
        _timing.update_section(args.output, SECTION, markdown)
        print(f"\nWrote the '{SECTION}' section of {os.path.abspath(args.output)}")
    return {"steps": steps, "throughput": throughput, "scaling": scaling, "markdown": markdown}


if __name__ == "__main__":
    main()
    sys.exit(0)
