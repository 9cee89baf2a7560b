"""``folder``: the user's own tagged images, listed in two CSV files.

Layout (the format of Kaggle's Planet dataset)::

    DIR/train.csv        image,labels
                         photos/0001.jpg,cat sofa
                         photos/0002.png,dog
    DIR/val.csv          same header and format
    DIR/classes.txt      optional: one class per line, fixes the class order

* ``image`` is a path relative to ``DIR`` (absolute paths work too); JPEG, PNG or anything Pillow
  reads, any size. Greyscale, palette and CMYK images are converted to RGB; transparent images are
  composited on white. EXIF orientation is applied. Images are squish-resized to
  ``image_size × image_size`` (bilinear, antialiased), as in the official ASL recipe.
* ``labels`` are separated by spaces; an empty field is allowed (an image with no positive label).
  Quote the field if a label contains a comma.
* Partial labels (Open Images style): a CSV may have a third column, ``image,labels,negatives``.
  Then ``negatives`` lists the classes known to be absent, and a class in neither column is
  *unknown* for that image (label -1): it is left out of the loss, of Δp and of every metric.
  Without the column every class that is not listed is a negative. A class may not be in both.
* Class order: ``classes.txt`` when present (then a training label outside it is an error),
  otherwise the sorted union of the training labels (and negatives). A validation label that is
  not a class is an error, or (``allow_unknown_val_labels``) ignored with a warning.

Before anything trains, **every row is checked** and every problem is reported with its CSV file
and line: malformed or empty rows, missing files, unreadable or corrupt images, unknown classes.
``skip_bad_rows=True`` skips those rows instead and logs how many (``source.skipped``).
An image listed again with other labels, or in both train.csv and val.csv, is used as written,
with a warning (``source.duplicates``); listed twice with the same labels, it is used twice.

Decoding: the check decodes every image once (in a thread pool; Pillow releases the GIL while
decoding, and JPEGs are decoded at reduced scale: by libjpeg-turbo through ``simplejpeg`` when
installed, otherwise with Pillow's ``draft``). When the decoded split fits in
``memory_limit_bytes`` the images stay in memory; otherwise they are decoded again per batch by
the Grain pipeline of :mod:`asl_jax.data.pipeline`: in ``num_workers`` worker processes (0: in
threads of the training process), batches prefetched, the iterator state checkpointable.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import io
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np

from asl_jax.data.base import (
    Batch,
    BatchRequest,
    IndexedSource,
    check_split,
    checked_replacement,
)
from asl_jax.data.pipeline import GrainBatches, ImageReadError

logger = logging.getLogger(__name__)

#: Decoded images are kept in memory up to this many bytes (both splits together).
DEFAULT_MEMORY_LIMIT_BYTES = 2 << 30
CSV_FILES = {"train": "train.csv", "val": "val.csv"}
#: Checking at least this many images shows a progress bar (when tqdm is installed).
_PROGRESS_MIN_IMAGES = 2000
HEADER = ("image", "labels")
#: The header of a CSV with partial labels: classes in neither column are unknown.
HEADER_WITH_NEGATIVES = ("image", "labels", "negatives")


class FolderDataError(ValueError):
    """The folder dataset has problems; ``problems`` lists them, one ``file:line: message`` each."""

    def __init__(self, message: str, problems: Sequence[str]) -> None:
        super().__init__(message)
        self.problems = list(problems)


def load_image(path: str | os.PathLike | BinaryIO, image_size: int) -> np.ndarray:
    """Reads an image file as uint8 RGB, squish-resized to ``image_size × image_size``.

    The same function serves training, evaluation and prediction, so a model sees identical
    preprocessing everywhere. JPEGs are decoded at a reduced scale (through the DCT) that is
    still >= the target size: by libjpeg-turbo through ``simplejpeg`` when it is
    installed (:func:`decode_jpeg_scaled`), otherwise, and for every other format, by Pillow
    (:func:`load_image_with_pillow`); both then resize bilinearly with Pillow.

    Args:
      path: an image file (a path or a binary file object) Pillow can read (JPEG, PNG, ...).
      image_size: output side in pixels.

    Returns:
      uint8 array [image_size, image_size, 3].

    Raises:
      OSError (or another Pillow error): the file is missing, not an image, or corrupt.

    Examples:
      >>> load_image("photos/0001.jpg", 224).shape  # doctest: +SKIP
      (224, 224, 3)
    """
    if isinstance(path, str | os.PathLike):
        with open(path, "rb") as f:
            data = f.read()
    else:
        data = path.read()
    decoded = decode_jpeg_scaled(data, image_size)
    if decoded is None:
        return load_image_with_pillow(io.BytesIO(data), image_size)
    return _resize(decoded, image_size)


def load_image_with_pillow(path: str | os.PathLike | BinaryIO, image_size: int) -> np.ndarray:
    """:func:`load_image` decoding with Pillow only (every format; JPEGs in draft mode)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        # JPEG only: decode at a reduced scale (1/2, 1/4, 1/8) that is still >= the target size.
        im.draft("RGB", (image_size, image_size))
        ImageOps.exif_transpose(im, in_place=True)  # in place: no copy when nothing turns
        im = _to_rgb(im)
        im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


@functools.cache
def _simplejpeg() -> Any:
    """The ``simplejpeg`` module (libjpeg-turbo), or None when it is not installed."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def decode_jpeg_scaled(data: bytes, image_size: int) -> np.ndarray | None:
    """A JPEG decoded by libjpeg-turbo at the smallest DCT scale whose sides are >= ``image_size``.

    libjpeg-turbo scales by eighths (1/8, 1/4, 3/8, 1/2, ...), Pillow's draft mode by powers of
    two only; the entropy decoding, the same at every scale, is most of the time of a
    photo-sized JPEG, so both decode such images in about the same time.

    Args:
      data: the bytes of an image file.
      image_size: the side the image will be resized to.

    Returns:
      uint8 RGB ``[h, w, 3]`` with ``h, w >= image_size`` (or the full size, when smaller); None
      when this decoder does not handle the file and Pillow should: ``simplejpeg`` is not
      installed, the file is not a JPEG, its EXIF orientation asks for a rotation, or
      libjpeg-turbo reports a problem (Pillow then decides whether it is an error).
    """
    simplejpeg = _simplejpeg()
    if simplejpeg is None or not simplejpeg.is_jpeg(data) or jpeg_orientation(data) != 1:
        return None
    try:
        return simplejpeg.decode_jpeg(
            data, "RGB", min_height=image_size, min_width=image_size, strict=True
        )
    except ValueError:
        return None


def _resize(image: np.ndarray, image_size: int) -> np.ndarray:
    """Bilinear squish-resize of uint8 RGB ``image`` with Pillow (what the Pillow path does)."""
    from PIL import Image

    if image.shape[:2] == (image_size, image_size):
        return image
    im = Image.fromarray(image, "RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation (1…8) of a JPEG's APP1 segment; 1 (upright) when it has none.

    Reads the markers up to the start of the scan, without decoding anything; a malformed
    segment counts as no orientation (the decoder reports real damage).
    """
    position = 2  # after SOI
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:  # start of scan: no more metadata
            break
        segment = data[position + 4 : position + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\0\0"):
            return _tiff_orientation(segment[6:])
        position += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    """Tag 0x0112 of the first IFD of an EXIF TIFF block; 1 when absent or malformed."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1

    def number(offset: int, size: int) -> int:
        return int.from_bytes(tiff[offset : offset + size], order)

    ifd = number(4, 4)
    count = number(ifd, 2) if ifd + 2 <= len(tiff) else 0
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        if number(entry, 2) == 0x0112:
            value = number(entry + 8, 2)
            return value if 1 <= value <= 8 else 1
    return 1


def _to_rgb(im):
    from PIL import Image

    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels often hold black; white is the usual background of such images.
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    if im.mode.startswith("I") or im.mode == "F":
        # 16-bit / 32-bit greyscale: rescale to 8 bits rather than clipping at 255.
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16"):
            a = a / 257.0
        elif a.size and a.max() > 255:
            a = a / a.max() * 255.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    return im if im.mode == "RGB" else im.convert("RGB")


@dataclasses.dataclass
class _Row:
    line: int
    image: str  # as written in the CSV
    path: str  # resolved
    labels: tuple[str, ...]
    negatives: tuple[str, ...] | None = None  # None: no negatives column, unlisted = negative

    def classes(self) -> tuple[str, ...]:
        """Every class the row names (positive or negative)."""
        return self.labels + (self.negatives or ())


def _parse_csv(directory: str, split: str) -> tuple[list[_Row], list[str], list[str]]:
    """Returns (rows that parsed, row problems, fatal file-level problems)."""
    name = CSV_FILES[split]
    rows: list[_Row] = []
    problems: list[str] = []
    fatal: list[str] = []
    with open(os.path.join(directory, name), newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            fatal.append(f"{name}:1: the file is empty (expected the header 'image,labels').")
            return rows, problems, fatal
        columns = tuple(h.strip().lower() for h in header)
        if columns not in (HEADER, HEADER_WITH_NEGATIVES):
            fatal.append(
                f"{name}:1: the header must be 'image,labels' or 'image,labels,negatives', got "
                f"{','.join(header)!r}."
            )
        width = len(HEADER_WITH_NEGATIVES if columns == HEADER_WITH_NEGATIVES else HEADER)
        for record in reader:
            line = reader.line_num
            fields = [field.strip() for field in record]
            if not any(fields):
                problems.append(f"{name}:{line}: empty row.")
                continue
            if len(fields) != width:
                problems.append(
                    f"{name}:{line}: expected {width} fields ({','.join(columns[:width])}), got "
                    f"{len(fields)}: {','.join(record)!r} (quote a field if a label contains a "
                    "comma)."
                )
                continue
            image, labels = fields[:2]
            negatives = tuple(dict.fromkeys(fields[2].split())) if width == 3 else None
            if not image:
                problems.append(f"{name}:{line}: the image path is empty.")
                continue
            path = os.path.normpath(os.path.join(directory, os.path.expanduser(image)))
            rows.append(_Row(line, image, path, tuple(dict.fromkeys(labels.split())), negatives))
    return rows, problems, fatal


def _read_classes(directory: str) -> tuple[list[str] | None, list[str]]:
    path = os.path.join(directory, "classes.txt")
    if not os.path.isfile(path):
        return None, []
    classes: list[str] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            name = line.strip()
            if not name:
                continue
            if len(name.split()) != 1 or "," in name:
                problems.append(
                    f"classes.txt:{line_no}: {name!r} cannot be a label "
                    "(labels are separated by spaces and cannot contain commas)."
                )
            elif name in seen:
                problems.append(
                    f"classes.txt:{line_no}: duplicate class {name!r} (first on line {seen[name]})."
                )
            else:
                seen[name] = line_no
                classes.append(name)
    if not classes and not problems:
        problems.append("classes.txt: no classes listed.")
    return classes, problems


def _check_image(path: str, image_size: int) -> tuple[np.ndarray | None, str | None]:
    try:
        return load_image(path, image_size), None
    except FileNotFoundError:
        return None, "not found"
    except Exception as e:  # Pillow raises many types for corrupt files; report them all.
        return None, f"cannot read the image ({type(e).__name__}: {e})"


def _check_labels(
    rows: dict[str, list[_Row]],
    classes: list[str],
    flag: Callable[[str, int, str], None],
    allow_unknown_val_labels: bool,
    directory: str,
) -> None:
    """Flags rows with labels outside ``classes`` (or drops such validation labels, if allowed)."""
    class_set = set(classes)
    for split, split_rows in rows.items():
        for i, row in enumerate(split_rows):
            both = sorted(set(row.labels) & set(row.negatives or ()))
            if both:
                flag(split, i, f"class(es) {both} listed both as labels and as negatives.")
    for i, row in enumerate(rows["train"]):
        unknown = [label for label in row.classes() if label not in class_set]
        if unknown:
            flag("train", i, f"unknown class(es) {unknown} (not in classes.txt).")
    ignored: dict[str, int] = {}
    for i, row in enumerate(rows["val"]):
        unknown = [label for label in row.classes() if label not in class_set]
        if not unknown:
            continue
        if allow_unknown_val_labels:
            for label in unknown:
                ignored[label] = ignored.get(label, 0) + 1
            row.labels = tuple(label for label in row.labels if label in class_set)
            if row.negatives is not None:
                row.negatives = tuple(label for label in row.negatives if label in class_set)
        else:
            flag(
                "val",
                i,
                f"unknown class(es) {unknown}, not among the {len(classes)} classes "
                "(set data.allow_unknown_val_labels=True to ignore them).",
            )
    if ignored:
        logger.warning(
            "folder %s: ignored %d validation labels of unknown classes: %s",
            directory,
            sum(ignored.values()),
            ", ".join(f"{k} ({v})" for k, v in sorted(ignored.items())),
        )


def _decode_all(
    paths: list[str], image_size: int, workers: int, keep: bool, directory: str
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Decodes every image once (in threads): the kept images, and the error of each bad one."""
    start = time.perf_counter()
    decoded: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda p: _check_image(p, image_size), paths)
        if len(paths) >= _PROGRESS_MIN_IMAGES:
            results = _progress(results, total=len(paths), desc="checking images")
        for p, (image, error) in zip(paths, results, strict=True):
            if error is not None:
                errors[p] = error
            elif keep:
                decoded[p] = image
    elapsed = time.perf_counter() - start
    logger.info(
        "folder %s: decoded %d images in %.1f s (%.0f images/s)",
        directory,
        len(paths),
        elapsed,
        len(paths) / max(elapsed, 1e-9),
    )
    return decoded, errors


def _usable_rows(
    rows: dict[str, list[_Row]],
    bad: dict[str, dict[int, list[str]]],
    fatal: list[str],
    parse_problems: list[str],
    skip_bad_rows: bool,
    directory: str,
) -> tuple[list[str], dict[str, int], dict[str, list[_Row]]]:
    """The problems (``file:line: message``), rows skipped per split and the usable rows.

    Raises:
      FolderDataError: a file-level problem, a bad row without ``skip_bad_rows``, or a split left
        without rows.
    """
    problems = list(parse_problems)
    for split, split_rows in rows.items():
        for i, messages in bad[split].items():
            problems += [f"{CSV_FILES[split]}:{split_rows[i].line}: {m}" for m in messages]
    problems.sort(key=_problem_order)
    all_problems = fatal + problems
    if fatal or (problems and not skip_bad_rows):
        hint = "" if fatal else " (fix them, or set data.skip_bad_rows=True to skip these rows)"
        raise FolderDataError(
            f"folder dataset {directory}: {len(all_problems)} problem(s){hint}:\n  "
            + "\n  ".join(all_problems),
            all_problems,
        )
    skipped: dict[str, int] = {}
    usable: dict[str, list[_Row]] = {}
    for split, split_rows in rows.items():
        bad_parse = sum(p.startswith(CSV_FILES[split] + ":") for p in parse_problems)
        skipped[split] = bad_parse + len(bad[split])
        usable[split] = [r for i, r in enumerate(split_rows) if i not in bad[split]]
        if not usable[split]:
            raise FolderDataError(
                f"folder dataset {directory}: {CSV_FILES[split]} has no usable rows"
                + (f" ({skipped[split]} skipped)." if skipped[split] else "."),
                all_problems,
            )
    if problems:
        logger.warning(
            "folder %s: skipped %d bad rows (train %d, val %d); first: %s",
            directory,
            sum(skipped.values()),
            skipped["train"],
            skipped["val"],
            problems[0],
        )
    return all_problems, skipped, usable


#: How many duplicated images a warning names (then a count of the others).
_NAMED_DUPLICATES = 3


def _warn_duplicates(rows: dict[str, list[_Row]], directory: str) -> list[str]:
    """Warns (and returns the warnings) about an image listed with different labels, within a
    split or across train and val, and about an image in both splits.

    An image listed twice with the same labels in one split is allowed without a word: it is
    sampled twice as often, which may be what the CSV's author wanted.
    """
    warnings = []
    for split, split_rows in rows.items():
        first: dict[str, _Row] = {}
        conflicts = []
        for row in split_rows:
            seen = first.setdefault(row.path, row)
            if seen is not row and _targets(seen) != _targets(row):
                conflicts.append(f"{row.image} (lines {seen.line} and {row.line})")
        if conflicts:
            warnings.append(
                f"{CSV_FILES[split]} lists {len(conflicts)} image(s) again with other labels: "
                f"{_some(conflicts)}; each row is used as written"
            )
    train = {row.path: row for row in rows["train"]}
    shared = [row.image for row in rows["val"] if row.path in train]
    if shared:
        shared = list(dict.fromkeys(shared))
        warnings.append(
            f"{len(shared)} image(s) are in both train.csv and val.csv: {_some(shared)}; "
            "the validation metrics are not measured on held-out images"
        )
    for warning in warnings:
        logger.warning("folder %s: %s", directory, warning)
    return warnings


def _targets(row: _Row) -> tuple[frozenset[str], frozenset[str] | None]:
    negatives = None if row.negatives is None else frozenset(row.negatives)
    return frozenset(row.labels), negatives


def _some(items: list[str]) -> str:
    named = ", ".join(items[:_NAMED_DUPLICATES])
    more = len(items) - _NAMED_DUPLICATES
    return named + (f" and {more} more" if more > 0 else "")


class FolderLoader:
    """Decodes the images of given rows of one split (picklable: sent to Grain's workers).

    Args:
      paths: the image file of each row.
      labels: float32 [N, K] labels of the rows.
      image_size: side of the squish-resized images.
    """

    def __init__(self, paths: Sequence[str], labels: np.ndarray, image_size: int) -> None:
        self.paths, self.labels, self.image_size = tuple(paths), labels, int(image_size)

    def __call__(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(images uint8 [n, S, S, 3], labels float32 [n, K])`` of rows ``indices``.

        Raises:
          ImageReadError: naming the file that cannot be read (and Pillow's reason).
        """
        images = np.empty((len(indices), self.image_size, self.image_size, 3), np.uint8)
        for j, i in enumerate(indices.tolist()):
            try:
                images[j] = load_image(self.paths[i], self.image_size)
            except Exception as e:  # Pillow raises many types for corrupt files
                raise ImageReadError(
                    f"cannot read the image {self.paths[i]} ({type(e).__name__}: {e}); it was "
                    "readable when the dataset was checked: was it changed since?"
                ) from e
        return images, self.labels[indices].copy()


class FolderSource(GrainBatches, IndexedSource):
    """The user's own dataset (see the module docstring for the format).

    Args:
      path: the directory holding ``train.csv``, ``val.csv`` and optionally ``classes.txt``.
      image_size: side of the (squish-resized) images.
      skip_bad_rows: skip problematic rows (and log how many) instead of raising.
      allow_unknown_val_labels: ignore validation labels that are not classes (with a warning).
      num_workers: worker processes decoding the batches when streaming (``data.num_workers``;
        0 = threads of the training process).
      memory_limit_bytes: keep decoded images in memory when they fit in this budget; otherwise
        (and always with 0) stream: decode each batch again, through the Grain pipeline.
      check_threads: threads decoding every image once in the check (default:
        ``min(32, cpu_count + 4)``).

    Attributes (beyond the protocol):
      skipped: ``{"train": n, "val": m}`` rows skipped (with ``skip_bad_rows``).
      problems: the problems found (``file:line: message``), also when they were skipped.
      duplicates: the warnings (also logged) about an image listed again with other labels, or
        in both train.csv and val.csv (one listed twice with the same labels is allowed).
      in_memory: whether the decoded images are kept in memory.

    Raises:
      FolderDataError: (a ValueError) listing every problem with file and line.
    """

    def __init__(
        self,
        path: str,
        *,
        image_size: int,
        skip_bad_rows: bool = False,
        allow_unknown_val_labels: bool = False,
        num_workers: int = 0,
        memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
        check_threads: int | None = None,
    ) -> None:
        directory = os.path.abspath(os.path.expanduser(path))
        for name in CSV_FILES.values():
            if not os.path.isfile(os.path.join(directory, name)):
                raise ValueError(
                    f"data.path={path!r} has no {name} (expected train.csv and val.csv with the "
                    "header 'image,labels')."
                )
        self.name = "folder"
        self.image_size = int(image_size)
        self.directory = directory
        self._workers = check_threads or min(32, (os.cpu_count() or 1) + 4)
        self.num_workers = int(num_workers)

        fatal: list[str] = []
        bad: dict[str, dict[int, list[str]]] = {"train": {}, "val": {}}  # split -> row -> msgs
        rows: dict[str, list[_Row]] = {}
        parse_problems: list[str] = []
        for split in CSV_FILES:
            rows[split], problems, file_fatal = _parse_csv(directory, split)
            parse_problems += problems
            fatal += file_fatal

        classes, class_problems = _read_classes(directory)
        fatal += class_problems
        if classes is None:
            classes = sorted({label for row in rows["train"] for label in row.classes()})

        def flag(split: str, i: int, message: str) -> None:
            bad[split].setdefault(i, []).append(message)

        _check_labels(rows, classes, flag, allow_unknown_val_labels, directory)

        # Decode every referenced image once: that is the only reliable corruption check.
        unique = sorted({row.path for split_rows in rows.values() for row in split_rows})
        keep = len(unique) * self.image_size**2 * 3 <= memory_limit_bytes
        decoded, errors = _decode_all(unique, self.image_size, self._workers, keep, directory)
        for split, split_rows in rows.items():
            for i, row in enumerate(split_rows):
                if row.path in errors:
                    where = row.image if row.image == row.path else f"{row.image} ({row.path})"
                    flag(split, i, f"image {where}: {errors[row.path]}")

        self.problems, self.skipped, self._rows = _usable_rows(
            rows, bad, fatal, parse_problems, skip_bad_rows, directory
        )
        self.duplicates = _warn_duplicates(self._rows, directory)
        if not classes:
            raise FolderDataError(
                f"folder dataset {directory}: no labels in train.csv, so there are no classes "
                "(or list them in classes.txt).",
                self.problems,
            )

        self.class_names = tuple(classes)
        self.num_classes = len(classes)
        index = {c: k for k, c in enumerate(classes)}
        self._labels: dict[str, np.ndarray] = {}
        self._images: dict[str, np.ndarray] | None = {} if keep else None
        for split, split_rows in self._rows.items():
            labels = np.zeros((len(split_rows), self.num_classes), np.float32)
            for i, row in enumerate(split_rows):
                if row.negatives is not None:  # partial labels: unlisted classes are unknown
                    labels[i] = -1.0
                    labels[i, [index[c] for c in row.negatives]] = 0.0
                labels[i, [index[c] for c in row.labels]] = 1.0
            self._labels[split] = labels
            if self._images is not None:
                self._images[split] = np.stack([decoded[r.path] for r in split_rows])
        self.in_memory = self._images is not None

    def num_examples(self, split: str) -> int:
        """Number of usable rows of ``split``."""
        return len(self._rows[check_split(split)])

    def labels(self, split: str) -> np.ndarray:
        """float32 [N, K] labels of ``split``: 1 positive, 0 negative, -1 unknown."""
        return self._labels[check_split(split)]

    def replace_labels(self, split: str, labels: np.ndarray) -> None:
        """Replaces the labels of ``split`` (simulated annotation), same shape, float32."""
        self._labels[split] = checked_replacement(self.labels(split), labels)

    def gather(self, split: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._images is not None:
            return self._images[split][indices], self._labels[split][indices]
        return self.loader(split)(indices)

    def loader(self, split: str) -> FolderLoader:
        """The decoder of ``split``'s rows (what the Grain pipeline runs)."""
        paths = [row.path for row in self._rows[check_split(split)]]
        return FolderLoader(paths, self._labels[split], self.image_size)

    def batches(self, request: BatchRequest) -> Iterator[Batch]:
        """See :class:`~asl_jax.data.base.DataSource`: in memory, or streamed through Grain.

        Streaming, the iterator of an epoch has ``get_state()`` / ``set_state()``
        (:class:`~asl_jax.data.pipeline.EpochBatches`).
        """
        if self.in_memory:
            return super().batches(request)
        return self.grain_batches(request)


def _progress(iterable, *, total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="img", leave=False)


def _problem_order(problem: str) -> tuple[str, int]:
    name, line, _ = problem.split(":", 2)
    return name, int(line) if line.isdigit() else 0
