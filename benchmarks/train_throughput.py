"""Images/s of the training loop against the input pipeline alone.

The shapes pipeline (`source.batches(...)`) alone, the train step alone on device-resident
batches, and the loop (batches → `shard_batch` → train step) of the default config; the same for
a folder dataset of JPEGs written to a temporary directory (decoded per batch, as for a dataset
too large for memory).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from benchmarks import _timing
from benchmarks._train_common import (
    ASL_STATIC,
    LOSS_SETTINGS,
    BenchModel,
    _compile_train,
    _rate,
    _single_device_mesh,
    _Stepper,
    _take_batches,
    make_config,
    programs_for,
)

SHAPES_PIPELINE = "shapes pipeline alone (`source.batches`)"
STEP_ALONE = "train step alone (device-resident batches)"
SHAPES_LOOP = "train loop on shapes (batches → shard_batch → step)"
FOLDER_MEMORY = "folder pipeline alone, decoded images in memory"
FOLDER_PIPELINE = "folder pipeline alone, JPEG decode per batch (streaming)"
FOLDER_LOOP = "train loop on folder, streaming (batches → shard_batch → step)"


@dataclasses.dataclass
class ThroughputResult:
    """Images/s of the pipelines and the loop; each sample covers `steps[name]` batches."""

    spec: BenchModel
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
    spec: BenchModel,
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
    from asl_jax.data import BatchRequest, create_source, steps_per_epoch
    from asl_jax.data.folder import FolderSource
    from asl_jax.training import shard_batch

    mesh = _single_device_mesh()
    config = make_config(spec, LOSS_SETTINGS[loss], cache_dir=cache_dir)
    source = create_source(config.data, seed=seed)
    programs = programs_for(config, source, spec, mesh)
    batch_size = config.batch_size
    epochs = iter(range(1, 1 << 30))

    def batches_of(src: Any, count: int) -> Iterator[dict]:
        # A new epoch per sample; cycles when an epoch has fewer than `count` batches.
        remaining = count
        while remaining:
            request = BatchRequest.training(batch_size=batch_size, seed=seed, epoch=next(epochs))
            for batch in src.batches(request):
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


def throughput_ratios_table(result: ThroughputResult) -> str:
    """Images/s ratios: what the pipelines deliver against what the loop consumes."""
    rate = result.images_per_second
    rows = [
        ["shapes pipeline alone / train loop on shapes", rate(SHAPES_PIPELINE) / rate(SHAPES_LOOP)],
        ["train loop on shapes / train step alone", rate(SHAPES_LOOP) / rate(STEP_ALONE)],
    ]
    if FOLDER_LOOP in result.timings:
        rows += [
            [
                "folder pipeline alone, streaming / train loop on shapes",
                rate(FOLDER_PIPELINE) / rate(SHAPES_LOOP),
            ],
            [
                "train loop on folder, streaming / train step alone",
                rate(FOLDER_LOOP) / rate(STEP_ALONE),
            ],
        ]
    return _timing.markdown_table(
        ["images/s ratio", "×"], [[name, f"{ratio:.2f}"] for name, ratio in rows]
    )
