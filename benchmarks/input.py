"""Images/s of the input pipelines that decode JPEGs: the folder source's, old and new, and tf.data.

On the same generated 640×480 JPEGs (photo-like: smooth colour fields and sensor-like noise,
quality 90) and at each output size, one epoch of batches per candidate and round, the
candidates in a new random order each round, in one process:

* the previous folder streaming: a thread pool decoding each batch with ``load_image``, two
  batches prefetched by a background thread (what ``FolderSource`` did before the Grain pipeline);
* the Grain pipeline of ``FolderSource`` (``memory_limit_bytes=0``) with ``data.num_workers`` 0
  (threads of this process) and a few worker processes; its stream lives across rounds, as it
  lives across epochs in training, so the workers' start-up is not counted;
* tf.data: read, decode (DCT-scaled, as the TFDS source does) and resize in parallel
  (``AUTOTUNE``), batch, prefetch; only when TensorFlow is installed.

Every candidate uses every core; "per core" divides by the usable cores. Run
``python -m benchmarks.input`` (``--quick`` for a tiny smoke run).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from benchmarks import _machine, _timing

SECTION = "input"
OLD = "folder streaming before (thread pool + prefetch thread)"
TF_DATA = "tf.data (parallel decode with DCT scaling, AUTOTUNE)"


def grain_name(workers: int) -> str:
    where = "in-process threads" if workers == 0 else f"{workers} worker processes"
    return f"folder streaming now, Grain, num_workers={workers} ({where})"


def write_jpegs(directory: Path, count: int, width: int = 640, height: int = 480) -> Path:
    """``count`` photo-like JPEGs and the folder CSVs (all rows in train.csv); reused if there."""
    directory.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    def one(i: int) -> str:
        name = f"{i:05d}.jpg"
        if not (directory / name).exists():
            rng = np.random.default_rng(i)
            y, x = np.mgrid[0:height, 0:width]
            f = rng.uniform(8, 40, size=(3, 2))
            smooth = np.stack([np.sin(x / f[c, 0] + i) * np.cos(y / f[c, 1]) for c in range(3)], -1)
            pixels = smooth * 90 + 128 + rng.normal(0, 8, (height, width, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                directory / name, quality=90
            )
        return f"{name},{'a' if i % 2 else 'b'}"

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        rows = list(pool.map(one, range(count)))
    (directory / "train.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")
    (directory / "val.csv").write_text("image,labels\n" + "\n".join(rows[:8]) + "\n")
    return directory


def old_pipeline(source, batch_size: int) -> Callable[[], Iterator[dict]]:
    """The folder streaming of before: ``min(32, cpu + 4)`` decoding threads, 2 batches ahead."""
    from asl_jax.data.base import batch_indices, prefetch_map
    from asl_jax.data.folder import load_image

    paths = source.loader("train").paths
    pool = concurrent.futures.ThreadPoolExecutor(min(32, (os.cpu_count() or 1) + 4))

    def make(item):
        idx, mask = item
        images = list(pool.map(lambda i: load_image(paths[i], source.image_size), idx.tolist()))
        return {"image": np.stack(images), "mask": mask}

    def epoch() -> Iterator[dict]:
        plan = batch_indices(
            len(paths), batch_size=batch_size, seed=0, shuffle=True, drop_remainder=True
        )
        return prefetch_map(make, plan, 2)

    return epoch


def tf_pipeline(paths: list[str], size: int, batch_size: int) -> Callable[[], Iterator]:
    import tensorflow as tf

    from asl_jax.data.tfds import _decode_resize, _tf

    _tf()  # hides accelerators from TensorFlow
    ds = tf.data.Dataset.from_tensor_slices(paths).shuffle(len(paths), seed=0)
    ds = ds.map(
        lambda p: _decode_resize(tf, tf.io.read_file(p), size), num_parallel_calls=tf.data.AUTOTUNE
    )
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(2)
    return ds.as_numpy_iterator


def _epoch_seconds(make_epoch: Callable[[], Iterator]) -> tuple[float, int]:
    start, images = time.perf_counter(), 0
    for batch in make_epoch():
        images += len(batch["image"] if isinstance(batch, dict) else batch)
    return time.perf_counter() - start, images


def measure(directory: Path, size: int, workers: list[int], batch_size: int, rounds: int):
    """``{candidate: median images/s}`` at output side ``size``."""
    from asl_jax.data.folder import FolderSource

    candidates: dict[str, Callable[[], Iterator]] = {}
    reference = FolderSource(str(directory), image_size=size, memory_limit_bytes=0)
    candidates[OLD] = old_pipeline(reference, batch_size)
    sources = []
    for w in workers:
        source = FolderSource(str(directory), image_size=size, memory_limit_bytes=0, num_workers=w)
        sources.append(source)
        epochs = iter(range(1 << 30))
        candidates[grain_name(w)] = lambda s=source, e=epochs: s.batches(
            "train", batch_size=batch_size, seed=0, epoch=next(e), shuffle=True,
            drop_remainder=True,
        )  # fmt: skip
    try:
        candidates[TF_DATA] = tf_pipeline(reference.loader("train").paths, size, batch_size)
    except ImportError:
        pass
    rates: dict[str, list[float]] = {name: [] for name in candidates}
    rng = random.Random(size)
    for name in candidates:  # warm-up: worker start-up, tf.data graph building
        next(iter(candidates[name]()))
    for _ in range(rounds):
        order = list(candidates)
        rng.shuffle(order)
        for name in order:
            seconds, images = _epoch_seconds(candidates[name])
            rates[name].append(images / seconds)
    for source in sources:
        source.close()
    return {name: statistics.median(values) for name, values in rates.items()}


def report(results: dict[int, dict[str, float]], cores: int) -> str:
    sizes = sorted(results)
    headers = ["pipeline"]
    for size in sizes:
        headers += [f"{size} px img/s", f"{size} px img/s/core", f"{size} px ×before"]
    rows = []
    for name in results[sizes[0]]:
        row = [name]
        for size in sizes:
            rate = results[size][name]
            row += [f"{rate:.0f}", f"{rate / cores:.0f}", f"{rate / results[size][OLD]:.2f}"]
        rows.append(row)
    return _timing.markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--sizes", default="224,448", help="output sides, comma-separated")
    parser.add_argument("--workers", default="0,1,2", help="Grain num_workers values to time")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="", help="where the JPEGs are written (default: temp)")
    parser.add_argument("--quick", action="store_true", help="16 images, 32/48 px, one round")
    parser.add_argument("--output", default="", help="update this section of BENCHMARKS.md")
    parser.add_argument("--json", default="", help="write the results and machine here")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.sizes, args.workers, args.batch_size, args.rounds = (
            16,
            "32,48",
            "0,1",
            4,
            1,
        )
    info = _machine.machine_info(("grain", "pillow", "tensorflow"))
    cores = info["usable_cores"]
    print(_machine.machine_markdown(info))
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_jpegs(Path(args.dir or tmp), args.images)
        workers = [int(w) for w in args.workers.split(",")]
        results = {
            int(size): measure(directory, int(size), workers, args.batch_size, args.rounds)
            for size in args.sizes.split(",")
        }
    table = report(results, cores)
    command = _timing.command_line("benchmarks.input")
    print(f"\n{args.images} JPEGs of 640×480, batch {args.batch_size}, median of {args.rounds} "
          f"epochs per pipeline, {cores} usable cores:\n\n{table}")  # fmt: skip
    if args.output:
        body = (
            f"`{command}`\n\n{_machine.machine_markdown(info)}\n\n{args.images} JPEGs of "
            f"640×480, batch {args.batch_size}, median of {args.rounds} epochs each:\n\n{table}"
        )
        _timing.update_section(args.output, SECTION, body)
    if args.json:
        _machine.write_results_json(args.json, SECTION, command, info, results)
    return results


if __name__ == "__main__":
    main()
