"""Images/s of the input pipelines that decode JPEGs: the folder source's, old and new, and tf.data.

On the same generated 640×480 JPEGs (photo-like: smooth colour fields and sensor-like noise,
quality 90) and at each output size, one epoch of batches per candidate and round, the
candidates in a new random order each round, in one process:

* the previous folder streaming: a thread pool decoding each batch with Pillow in draft mode
  (``load_image_with_pillow``), two batches prefetched by a background thread (what
  ``FolderSource`` did before the Grain pipeline), the same with every JPEG pixel decoded (no
  ``Image.draft``: what draft decoding saves), and the same decoding with libjpeg-turbo through
  ``simplejpeg`` (``load_image``'s JPEG path, when simplejpeg is installed);
* the Grain pipeline of ``FolderSource`` (``memory_limit_bytes=0``; it decodes with
  ``load_image``, so with simplejpeg when installed) with ``data.num_workers`` 0
  (threads of this process) and a few worker processes; its stream lives across rounds, as it
  lives across epochs in training, so the workers' start-up is not counted;
* tf.data: read, decode (DCT-scaled, as the TFDS source does) and resize in parallel
  (``AUTOTUNE``), batch, prefetch; only when TensorFlow is installed.

Every candidate may use every core. "Per core" is images per CPU-second: the CPU time of this
process and of its child processes (Grain's workers) over the epoch, read from ``/proc``, so a
pipeline is charged for the cores it keeps busy, whatever else runs on the machine. The last
lines estimate, on paper, how many such cores feed one accelerator. Run
``python -m benchmarks.input`` (``--quick`` for a tiny smoke run).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
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
OLD = "folder streaming before (thread pool + prefetch thread, Pillow draft)"
OLD_FULL = "folder streaming before, full JPEG decode (no draft)"
TURBO = "same, libjpeg-turbo through simplejpeg (DCT-scaled by eighths)"
#: Images/s of one ResNet-50 fine-tuning step on one A100-class GPU at 224 px in mixed precision:
#: an assumption (the order of published training throughputs), not a measurement.
ACCELERATOR_IMAGES_PER_S = 2500
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


def load_full(path: str, image_size: int) -> np.ndarray:
    """``load_image`` without ``Image.draft``: every pixel of the JPEG decoded, then resized."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        return np.asarray(im.resize((image_size, image_size), Image.Resampling.BILINEAR))


def old_pipeline(
    source, batch_size: int, load: Callable[[str, int], np.ndarray] | None = None
) -> Callable[[], Iterator[dict]]:
    """The folder streaming of before: ``min(32, cpu + 4)`` decoding threads, 2 batches ahead;
    each image read by ``load`` (default: Pillow in draft mode, what it used)."""
    from asl_jax.data.base import BatchRequest, batch_indices, prefetch_map
    from asl_jax.data.folder import load_image_with_pillow

    load = load or load_image_with_pillow
    paths = source.loader("train").paths
    pool = concurrent.futures.ThreadPoolExecutor(min(32, (os.cpu_count() or 1) + 4))

    def make(item):
        idx, mask = item
        images = list(pool.map(lambda i: load(paths[i], source.image_size), idx.tolist()))
        return {"image": np.stack(images), "mask": mask}

    def epoch() -> Iterator[dict]:
        plan = batch_indices(len(paths), BatchRequest.training(batch_size=batch_size, seed=0))
        return prefetch_map(make, plan, 2)

    return epoch


def tf_pipeline(paths: list[str], size: int, batch_size: int) -> Callable[[], Iterator]:
    import tensorflow as tf

    from asl_jax.data.tfds import _decode_resize, _tf

    _tf()  # hides accelerators from TensorFlow
    ds = tf.data.Dataset.from_tensor_slices(list(paths)).shuffle(len(paths), seed=0)
    ds = ds.map(
        lambda p: _decode_resize(tf, tf.io.read_file(p), size), num_parallel_calls=tf.data.AUTOTUNE
    )
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(2)
    return ds.as_numpy_iterator


def _tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and its live descendants (Linux ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (name)"
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    me, total = os.getpid(), time.process_time()
    for pid in cpu:
        ancestor = parents.get(pid)
        while ancestor is not None and ancestor != me:
            ancestor = parents.get(ancestor)
        if ancestor == me:
            total += cpu[pid]
    return total


@dataclasses.dataclass
class Rate:
    """One pipeline at one size: median images/s and images per CPU-second over the rounds."""

    images_per_s: float
    images_per_cpu_s: float


def _epoch(make_epoch: Callable[[], Iterator]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and images of one epoch."""
    start, cpu, images = time.perf_counter(), _tree_cpu_seconds(), 0
    for batch in make_epoch():
        images += len(batch["image"] if isinstance(batch, dict) else batch)
    return time.perf_counter() - start, _tree_cpu_seconds() - cpu, images


def measure(
    directory: Path, size: int, workers: list[int], batch_size: int, rounds: int
) -> dict[str, Rate]:
    """``{candidate: Rate}`` at output side ``size``."""
    from asl_jax.data import BatchRequest
    from asl_jax.data.folder import FolderSource, load_image

    candidates: dict[str, Callable[[], Iterator]] = {}
    reference = FolderSource(str(directory), image_size=size, memory_limit_bytes=0)
    candidates[OLD] = old_pipeline(reference, batch_size)
    candidates[OLD_FULL] = old_pipeline(reference, batch_size, load_full)
    if _simplejpeg_version():
        candidates[TURBO] = old_pipeline(reference, batch_size, load_image)
    sources = []
    for w in workers:
        source = FolderSource(str(directory), image_size=size, memory_limit_bytes=0, num_workers=w)
        sources.append(source)
        epochs = iter(range(1 << 30))
        candidates[grain_name(w)] = lambda s=source, e=epochs: s.batches(
            BatchRequest.training(batch_size=batch_size, seed=0, epoch=next(e))
        )
    try:
        candidates[TF_DATA] = tf_pipeline(reference.loader("train").paths, size, batch_size)
    except ImportError:
        pass
    walls: dict[str, list[float]] = {name: [] for name in candidates}
    cpus: dict[str, list[float]] = {name: [] for name in candidates}
    rng = random.Random(size)
    for name in candidates:  # warm-up: worker start-up, tf.data graph building
        if name.startswith("folder streaming now"):
            _epoch(candidates[name])  # a whole epoch: the next one continues the stream
        else:
            next(iter(candidates[name]()))
    for _ in range(rounds):
        order = list(candidates)
        rng.shuffle(order)
        for name in order:
            wall, cpu, images = _epoch(candidates[name])
            walls[name].append(images / wall)
            cpus[name].append(images / cpu)
    for source in sources:
        source.close()
    return {
        name: Rate(statistics.median(walls[name]), statistics.median(cpus[name]))
        for name in candidates
    }


def report(results: dict[int, dict[str, Rate]]) -> str:
    """The table: per size, images/s, images per CPU-second and both relative to before."""
    sizes = sorted(results)
    headers = ["pipeline"]
    for size in sizes:
        headers += [f"{size} px img/s", f"{size} px img/CPU-s", f"{size} px ×before (per core)"]
    rows = []
    for name in results[sizes[0]]:
        row = [name]
        for size in sizes:
            rate, old = results[size][name], results[size][OLD]
            ratio = rate.images_per_cpu_s / old.images_per_cpu_s
            row += [f"{rate.images_per_s:.0f}", f"{rate.images_per_cpu_s:.0f}", f"{ratio:.2f}"]
        rows.append(row)
    return _timing.markdown_table(headers, rows)


def on_paper(results: dict[int, dict[str, Rate]]) -> str:
    """How many cores of the best folder pipeline feed one accelerator (an estimate)."""
    size = min(results)
    grain = {n: r for n, r in results[size].items() if n.startswith("folder streaming now")}
    name, best = max(grain.items(), key=lambda item: item[1].images_per_cpu_s)
    cores = ACCELERATOR_IMAGES_PER_S / best.images_per_cpu_s
    return (
        f"On paper (an estimate, not a measurement): a ResNet-50 fine-tuning step on one "
        f"A100-class GPU in mixed precision trains ~{ACCELERATOR_IMAGES_PER_S:,} images/s at 224 "
        f"px (assumed). At the {best.images_per_cpu_s:.0f} images per CPU-second measured here "
        f"for {name} at {size} px, feeding it takes ~{cores:.0f} such cores (the decode of 640×480 "
        "JPEGs only; augmentation runs on the accelerator)."
    )


def _simplejpeg_version() -> str | None:
    """The installed simplejpeg's version (None: the folder source decodes with Pillow)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("simplejpeg")
    except importlib.metadata.PackageNotFoundError:
        return None


def _tensorflow_package() -> str:
    """The installed TensorFlow distribution's name (the ``tfds`` extra installs the CPU one)."""
    import importlib.metadata

    for name in ("tensorflow", "tensorflow-cpu"):
        try:
            importlib.metadata.version(name)
            return name
        except importlib.metadata.PackageNotFoundError:
            pass
    return "tensorflow"


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked (``--quick`` replaces the sizes by tiny ones)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.input", description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--sizes", type=_int_list, default=[224, 448], help="output sides: 224,448")
    parser.add_argument("--workers", type=_int_list, default=[0, 1, 2], help="Grain num_workers")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="", help="where the JPEGs are written (default: temp)")
    parser.add_argument("--quick", action="store_true", help="16 images, 32/48 px, one round")
    _timing.add_document_flags(parser, SECTION)
    parser.add_argument(
        "--json",
        default="benchmarks/results/input.json",
        help="write the results and machine here ('' to skip)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.sizes, args.workers, args.batch_size, args.rounds = (
            16,
            [32, 48],
            [0, 1],
            4,
            1,
        )
    if args.rounds < 1 or args.batch_size < 1:
        parser.error(
            f"--rounds and --batch_size must be >= 1; got {args.rounds}, {args.batch_size}"
        )
    if args.images < args.batch_size:
        parser.error(f"--images ({args.images}) must be >= --batch_size ({args.batch_size})")
    if min(args.sizes) < 8 or min(args.workers) < 0:
        parser.error(f"--sizes must be >= 8 and --workers >= 0; got {args.sizes}, {args.workers}")
    return args


def main(argv: list[str] | None = None) -> dict[int, dict[str, Rate]]:
    """Runs the benchmark; prints (and optionally writes) the table and the estimate."""
    args = parse_args(argv)
    info = _machine.machine_info(("grain", "pillow", "simplejpeg", _tensorflow_package()))
    print(_machine.machine_markdown(info))
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_jpegs(Path(args.dir or tmp), args.images)
        results = {
            size: measure(directory, size, args.workers, args.batch_size, args.rounds)
            for size in args.sizes
        }
    command = _timing.command_line("benchmarks.input")
    text = (
        f"{args.images} JPEGs of 640×480, batch {args.batch_size}, median of {args.rounds} "
        f"epochs per pipeline, {info['usable_cores']} usable cores; img/CPU-s = images per "
        f"CPU-second of this process and its workers:\n\n{report(results)}\n\n{on_paper(results)}"
    )
    print(f"\n{text}")
    output = _timing.document_path(args)
    if output:
        body = f"## Input pipeline\n\n`{command}`\n\n{_machine.machine_markdown(info)}\n\n{text}"
        _timing.update_section(output, SECTION, body)
    if args.json:
        _machine.write_results_json(args.json, SECTION, command, info, results)
    return results


if __name__ == "__main__":
    main()
