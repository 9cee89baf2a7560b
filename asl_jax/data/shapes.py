"""``shapes``: the embedded multi-label dataset, generated on the fly (no download).

Each image shows 1–4 coloured objects on a noisy, textured background. A class is a
**colour × shape** pair (5 colours × 6 shapes = 30 classes, named like ``"red_circle"``); an image's
labels are the classes of the objects drawn on it. The class frequencies follow a Zipf law (the
most frequent class appears on ~45% of the images, like COCO's ``person``; the rarest on ~1.5%)
and images carry ~2 positives out of 30, so the label matrix is as sparse and as imbalanced as
COCO's — the regime ASL was designed for.

Layout: the image is split into 2 × 2 cells and each object goes to a different cell, with a size
of 30–50% of the image side and a small random offset, so neighbouring objects may overlap by a few
pixels but every labelled object stays recognisable. Drawing is vectorised NumPy (coverage masks
from coordinate grids with 2 × 2 super-sampling for anti-aliased edges); 8192 + 2048 images of
32 px take a few seconds and are cached on disk as ``.npz``.

Determinism: the images are a pure function of ``(seed, num_train, num_val, image_size)`` and
:data:`FORMAT_VERSION`; the cache file name carries all of them. Simulated missing labels
(``data.drop_positive_fraction``, ``data.annotation``) are applied after loading, to the train split
only, so they never invalidate the cached images.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Sequence

import numpy as np

from asl_jax.data.base import ArraySource

logger = logging.getLogger(__name__)

#: Bumped whenever the drawing changes, so stale caches are never reused.
FORMAT_VERSION = 1

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring")
#: Well-separated hues (RGB, 0–255); per-object jitter keeps them recognisable on any background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "yellow": (235, 215, 40),
    "green": (40, 185, 60),
    "blue": (45, 85, 235),
    "magenta": (205, 55, 215),
}
#: ``"<colour>_<shape>"``, colour-major: class ``k`` has colour ``k // 6`` and shape ``k % 6``.
CLASS_NAMES: tuple[str, ...] = tuple(f"{c}_{s}" for c in COLOURS for s in SHAPES)
NUM_CLASSES = len(CLASS_NAMES)

#: Probability of 1, 2, 3, 4 objects per image (mean 2.15).
OBJECTS_PER_IMAGE_PROBS = (0.35, 0.30, 0.20, 0.15)
MAX_OBJECTS = len(OBJECTS_PER_IMAGE_PROBS)
#: Class frequencies ∝ 1 / rank**ZIPF_EXPONENT.
ZIPF_EXPONENT = 1.0
#: Object side as a fraction of the image side (9.6–16 px at 32 px).
SIZE_RANGE = (0.30, 0.50)
#: How far (fraction of the image side) an object may reach into a neighbouring cell.
OVERLAP = 0.06
#: Images rendered per chunk: bounds memory; the chunk index seeds the noise, so it is part of
#: the format (changing it changes the images).
_CHUNK = 512


def class_prior() -> np.ndarray:
    """The Zipf class distribution: float64 [30], sums to 1.

    The frequency ranks follow a Latin design, ``rank r -> colour r % 5, shape (r // 5 + r % 5)
    % 6``, so every colour and every shape has frequent and rare classes (the five most frequent
    classes have five different colours and shapes) and neither cue alone predicts the class.
    The ranks are the same for every seed.
    """
    num_colours, num_shapes = len(COLOURS), len(SHAPES)
    weights = np.empty(NUM_CLASSES, dtype=np.float64)
    for r in range(NUM_CLASSES):
        colour, shape = r % num_colours, (r // num_colours + r % num_colours) % num_shapes
        weights[colour * num_shapes + shape] = 1.0 / (r + 1) ** ZIPF_EXPONENT
    return weights / weights.sum()


def default_cache_dir() -> str:
    """``~/.cache/asl_jax``."""
    return os.path.join(os.path.expanduser("~"), ".cache", "asl_jax")


def generate(
    num_images: int, *, image_size: int, seed: int, split_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draws ``num_images`` images and their labels.

    Args:
      num_images: number of images (>= 1).
      image_size: side in pixels (>= 8; objects are legible from about 24 px).
      seed: any int.
      split_id: 0 for train, 1 for val: independent random streams from the same seed.

    Returns:
      ``(images uint8 [N, S, S, 3], labels uint8 [N, 30])``.

    Examples:
      >>> images, labels = generate(4, image_size=32, seed=0)
      >>> images.shape, labels.shape
      ((4, 32, 32, 3), (4, 30))
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}.")
    seed = int(seed) % (1 << 64)
    rng = np.random.default_rng([seed, split_id, 0])
    n, s = num_images, float(image_size)

    # Scene parameters for the whole split first (chunking must not change them).
    num_obj = 1 + rng.choice(MAX_OBJECTS, size=n, p=OBJECTS_PER_IMAGE_PROBS)
    classes = rng.choice(NUM_CLASSES, size=(n, MAX_OBJECTS), p=class_prior())
    cells = np.argsort(rng.random((n, MAX_OBJECTS)), axis=1)  # a distinct 2x2 cell per object
    side = rng.uniform(*SIZE_RANGE, size=(n, MAX_OBJECTS)) * s
    offset = rng.uniform(-1.0, 1.0, size=(n, MAX_OBJECTS, 2))
    brightness = rng.uniform(0.8, 1.1, size=(n, MAX_OBJECTS, 1))
    tint = rng.normal(0.0, 8.0, size=(n, MAX_OBJECTS, 3))

    cell = s / 2
    reach = np.maximum(cell - side, 0.0)[..., None] / 2 + OVERLAP * s
    cell_yx = np.stack([cells // 2, cells % 2], axis=-1) * cell + cell / 2
    half = side[..., None] / 2
    centre = np.clip(cell_yx + offset * reach, half, s - half)
    palette = np.array(list(COLOURS.values()), dtype=np.float64)
    colour = np.clip(palette[classes // len(SHAPES)] * brightness + tint, 0, 255)

    labels = np.zeros((n, NUM_CLASSES), dtype=np.uint8)
    present = np.arange(MAX_OBJECTS)[None, :] < num_obj[:, None]
    rows = np.repeat(np.arange(n), MAX_OBJECTS)[present.ravel()]
    labels[rows, classes[present]] = 1

    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    for c, lo in enumerate(range(0, n, _CHUNK)):
        hi = min(lo + _CHUNK, n)
        chunk_rng = np.random.default_rng([seed, split_id, 1, c])
        canvas = _background(chunk_rng, hi - lo, image_size)
        for slot in range(MAX_OBJECTS):
            sl = slice(lo, hi)
            _paint(
                canvas,
                shape=classes[sl, slot] % len(SHAPES),
                centre=centre[sl, slot],
                half=side[sl, slot] / 2,
                colour=colour[sl, slot],
                active=present[sl, slot],
            )
        canvas += chunk_rng.normal(0.0, 8.0, size=canvas.shape).astype(np.float32)
        images[lo:hi] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return images, labels


def _background(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Grey-ish backgrounds with a smooth random texture: float32 [n, size, size, 3]."""
    base = rng.uniform(45.0, 165.0, size=(n, 1, 1, 1))
    tint = rng.normal(0.0, 10.0, size=(n, 1, 1, 3))
    # Low-frequency texture: a coarse random grid, bilinearly upsampled; mostly luminance so the
    # background never imitates an object colour.
    grid = 5
    lum = rng.normal(0.0, 22.0, size=(n, grid, grid, 1))
    chroma = rng.normal(0.0, 6.0, size=(n, grid, grid, 3))
    coarse = (lum + chroma).astype(np.float32)
    up = _interp_matrix(size, grid)
    texture = np.einsum("hg,ngwc,xw->nhxc", up, coarse, up, optimize=True)
    return (base + tint).astype(np.float32) + texture


def _interp_matrix(size: int, grid: int) -> np.ndarray:
    """Linear interpolation from ``grid`` knots to ``size`` pixel centres: float32 [size, grid]."""
    pos = (np.arange(size) + 0.5) / size * (grid - 1)
    left = np.minimum(np.floor(pos).astype(int), grid - 2)
    frac = pos - left
    m = np.zeros((size, grid), dtype=np.float32)
    m[np.arange(size), left] = 1 - frac
    m[np.arange(size), left + 1] = frac
    return m


def _shape_mask(shape: int, dy: np.ndarray, dx: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Inside-test of one shape, for offsets ``dy, dx`` from the centre and half-size ``h``."""
    ady, adx = np.abs(dy), np.abs(dx)
    name = SHAPES[shape]
    # Scale factors roughly equalise the visual area of the shapes.
    if name == "circle":
        return dy * dy + dx * dx <= h * h
    if name == "square":
        return np.maximum(ady, adx) <= 0.82 * h
    if name == "triangle":
        # Apex up, base at the bottom; the width grows linearly from apex to base.
        t = (dy + h) / (1.8 * h)
        return (t >= 0) & (t <= 1) & (adx <= t * h)
    if name == "diamond":
        return ady + adx <= 1.12 * h
    if name == "cross":
        arm = h / 3
        return ((ady <= arm) & (adx <= h)) | ((adx <= arm) & (ady <= h))
    if name == "ring":
        r2 = dy * dy + dx * dx
        return (r2 <= h * h) & (r2 >= (0.5 * h) ** 2)
    raise AssertionError(name)


def _paint(
    canvas: np.ndarray,
    *,
    shape: np.ndarray,
    centre: np.ndarray,
    half: np.ndarray,
    colour: np.ndarray,
    active: np.ndarray,
) -> None:
    """Alpha-blends one object into each image of ``canvas`` (in place)."""
    size = canvas.shape[1]
    # 2x2 super-sampling: the coverage fraction anti-aliases the edges.
    sub = np.array([0.25, 0.75], dtype=np.float32)
    pix = (np.arange(size, dtype=np.float32)[:, None] + sub[None, :]).ravel()  # [size*2]
    for k in range(len(SHAPES)):
        sel = np.flatnonzero(active & (shape == k))
        if sel.size == 0:
            continue
        cy = centre[sel, 0].astype(np.float32)[:, None, None]
        cx = centre[sel, 1].astype(np.float32)[:, None, None]
        h = half[sel].astype(np.float32)[:, None, None]
        inside = _shape_mask(k, pix[None, :, None] - cy, pix[None, None, :] - cx, h)
        alpha = inside.reshape(sel.size, size, 2, size, 2).mean(axis=(2, 4), dtype=np.float32)
        alpha = alpha[..., None]
        col = colour[sel].astype(np.float32)[:, None, None, :]
        canvas[sel] = canvas[sel] * (1 - alpha) + col * alpha


# ----------------------------------------------------------------------------------------------
# Disk cache.


def cache_path(cache_dir: str, *, num_train: int, num_val: int, image_size: int, seed: int) -> str:
    """The cache file for one parameter set (every generation parameter is in the name)."""
    name = (
        f"shapes_v{FORMAT_VERSION}_seed{int(seed)}_train{num_train}_val{num_val}_px{image_size}.npz"
    )
    return os.path.join(os.path.expanduser(cache_dir or default_cache_dir()), name)


def _meta(num_train: int, num_val: int, image_size: int, seed: int) -> str:
    return json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "num_train": num_train,
            "num_val": num_val,
            "image_size": image_size,
            "seed": int(seed),
        },
        sort_keys=True,
    )


def load_arrays(
    *, num_train: int, num_val: int, image_size: int, seed: int, cache_dir: str = ""
) -> dict[str, np.ndarray]:
    """The dataset's arrays, from the cache when present, else generated and cached.

    The cache write is atomic (a temporary file in the same directory, then ``os.replace``), so
    concurrent processes (e.g. several hosts sharing a home directory) never read a partial file;
    an unreadable or mismatched cache file is regenerated. An unwritable cache directory only
    costs the regeneration next time (a warning is logged).

    Returns:
      ``{"train_images", "train_labels", "val_images", "val_labels"}`` (uint8).
    """
    path = cache_path(
        cache_dir, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed
    )
    meta = _meta(num_train, num_val, image_size, seed)
    keys = ("train_images", "train_labels", "val_images", "val_labels")
    if os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as f:
                if str(f["meta"]) == meta:
                    arrays = {k: f[k] for k in keys}
                    if arrays["train_images"].shape[0] == num_train:
                        return arrays
            logger.warning("shapes cache %s does not match its parameters; regenerating.", path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            logger.warning("shapes cache %s is unreadable (%s); regenerating.", path, e)

    start = time.perf_counter()
    train_images, train_labels = generate(num_train, image_size=image_size, seed=seed, split_id=0)
    val_images, val_labels = generate(num_val, image_size=image_size, seed=seed, split_id=1)
    arrays = {
        "train_images": train_images,
        "train_labels": train_labels,
        "val_images": val_images,
        "val_labels": val_labels,
    }
    logger.info(
        "generated shapes (%d + %d images, %d px) in %.1f s",
        num_train,
        num_val,
        image_size,
        time.perf_counter() - start,
    )
    _write_atomic(path, meta=np.asarray(meta), **arrays)
    return arrays


def _write_atomic(path: str, **arrays: np.ndarray) -> None:
    directory = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp"
        )
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is plain public data
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        logger.warning("could not write the shapes cache %s (%s); continuing without it.", path, e)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


# ----------------------------------------------------------------------------------------------
# The source.


class ShapesSource(ArraySource):
    """The ``shapes`` dataset as a :class:`~asl_jax.data.base.DataSource`.

    Its labels are complete; :func:`asl_jax.data.create_source` applies the simulated missing
    labels of the ``data`` config to the train split afterwards.

    Attributes (beyond the protocol):
      cache_file: where the arrays are cached.
    """

    def __init__(
        self,
        *,
        num_train: int = 8192,
        num_val: int = 2048,
        image_size: int = 32,
        seed: int = 0,
        cache_dir: str = "",
    ) -> None:
        arrays = load_arrays(
            num_train=num_train,
            num_val=num_val,
            image_size=image_size,
            seed=seed,
            cache_dir=cache_dir,
        )
        self.cache_file = cache_path(
            cache_dir, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed
        )
        super().__init__(
            "shapes",
            CLASS_NAMES,
            train=(arrays["train_images"], arrays["train_labels"].astype(np.float32)),
            val=(arrays["val_images"], arrays["val_labels"].astype(np.float32)),
        )


def label_statistics(labels: np.ndarray, class_names: Sequence[str] = CLASS_NAMES) -> dict:
    """Summary of a label matrix: positives per image and per-class frequencies."""
    labels = np.asarray(labels) > 0.5
    per_image = labels.sum(axis=1)
    freq = labels.mean(axis=0)
    order = np.argsort(-freq)
    return {
        "num_images": int(labels.shape[0]),
        "positives_per_image_mean": float(per_image.mean()),
        "positives_per_image_max": int(per_image.max()),
        "images_without_positives": int((per_image == 0).sum()),
        "class_frequency_max": (class_names[order[0]], float(freq[order[0]])),
        "class_frequency_min": (class_names[order[-1]], float(freq[order[-1]])),
    }
