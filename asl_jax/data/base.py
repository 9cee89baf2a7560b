"""The data-source interface shared by every dataset, and an in-memory implementation.

Every dataset (``shapes``, ``folder``, ``voc2007``, ``coco2017``) is a :class:`DataSource`: it knows
its classes and split sizes and yields host-local batches of **uint8 NHWC** images, float32
multi-hot labels and a bool mask. Augmentation and the conversion to float happen later, on
device, inside the jitted train step (:mod:`asl_jax.data.augment`).

Batch semantics (the contract the training loop relies on), described by a :class:`BatchRequest`:

* ``batch_size`` is the **global** batch. Each of the ``process_count`` hosts receives its own
  contiguous slice of ``batch_size // process_count`` rows of every global batch, so that
  ``jax.make_array_from_process_local_data`` can assemble the global array.
* The order is a pure function of ``(seed, epoch)``: the same on every host and on every run, which
  makes a resumed run see exactly the batches an uninterrupted run would have seen.
* ``start_batch`` skips batches without producing them (resume in the middle of an epoch).
* ``drop_remainder=False`` (evaluation) pads the last global batch to the full ``batch_size`` with
  rows whose ``mask`` is False, so every host gets the same number of rows in every batch and the
  jitted evaluation step sees a single shape.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

SPLITS = ("train", "val")

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class BatchRequest:
    """Which batches :meth:`DataSource.batches` yields: one epoch of a split, this host's part.

    The one description of a batch stream that every source, the training loop and evaluation
    share. It is checked once, when it is made; what depends on the split's size (a
    ``drop_remainder`` batch larger than the split) is checked by :meth:`num_batches`.

    Attributes:
      split: ``"train"`` or ``"val"``.
      batch_size: the **global** batch (an int >= 1, divisible by ``process_count``).
      seed: with ``epoch``, fixes the order when ``shuffle`` (any int; negative seeds are folded
        into ``[0, 2**64)``).
      epoch: the epoch (an int >= 0).
      start_batch: the first global batch yielded (an int >= 0): the earlier ones are skipped
        without being produced (resume in the middle of an epoch).
      shuffle: False keeps the split's order.
      drop_remainder: True (training) yields only full global batches; False (evaluation) pads
        the last one to ``batch_size`` with rows whose ``mask`` is False.
      process_index: this host, an int in ``[0, process_count)``.
      process_count: the number of hosts (an int >= 1).

    Raises:
      TypeError: an int field that is not an int.
      ValueError: a field out of range, naming it and what was expected.

    Examples:
      >>> BatchRequest.training(batch_size=64, seed=0, epoch=2, start_batch=5).shuffle
      True
      >>> BatchRequest.evaluation("val", batch_size=128).drop_remainder
      False
      >>> BatchRequest("train", batch_size=6, process_count=4)
      Traceback (most recent call last):
      ...
      ValueError: batch_size=6 (the global batch) must be divisible by process_count=4 so that \
every host gets the same number of rows.
    """

    split: str
    _: dataclasses.KW_ONLY
    batch_size: int
    seed: int = 0
    epoch: int = 0
    start_batch: int = 0
    shuffle: bool = False
    drop_remainder: bool = False
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self) -> None:
        check_split(self.split)
        for name, minimum in (
            ("batch_size", 1),
            ("epoch", 0),
            ("start_batch", 0),
            ("process_count", 1),
            ("process_index", 0),
        ):
            object.__setattr__(self, name, _check_int(name, getattr(self, name), minimum=minimum))
        if self.process_index >= self.process_count:
            raise ValueError(
                f"process_index must be in [0, process_count={self.process_count}), got "
                f"{self.process_index}."
            )
        if self.batch_size % self.process_count:
            raise ValueError(
                f"batch_size={self.batch_size} (the global batch) must be divisible by "
                f"process_count={self.process_count} so that every host gets the same number of "
                "rows."
            )

    @classmethod
    def training(
        cls,
        *,
        batch_size: int,
        seed: int,
        epoch: int = 0,
        start_batch: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ) -> BatchRequest:
        """Training batches: the train split, shuffled by ``(seed, epoch)``, full batches only."""
        return cls(
            "train",
            batch_size=batch_size,
            seed=seed,
            epoch=epoch,
            start_batch=start_batch,
            shuffle=True,
            drop_remainder=True,
            process_index=process_index,
            process_count=process_count,
        )

    @classmethod
    def evaluation(
        cls, split: str, *, batch_size: int, process_index: int = 0, process_count: int = 1
    ) -> BatchRequest:
        """Evaluation batches: every example of ``split`` once, in order, the last batch padded."""
        return cls(
            split,
            batch_size=batch_size,
            process_index=process_index,
            process_count=process_count,
        )

    def replace(self, **changes: object) -> BatchRequest:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    @property
    def local_batch_size(self) -> int:
        """The rows of each global batch this host gets: ``batch_size // process_count``."""
        return self.batch_size // self.process_count

    def num_batches(self, num_examples: int) -> int:
        """Global batches per epoch of a split of ``num_examples`` (from batch 0 on).

        Raises:
          ValueError: ``drop_remainder`` and ``batch_size`` larger than the split (no batch).
        """
        if self.drop_remainder:
            if self.batch_size > num_examples:
                raise ValueError(
                    f"batch_size={self.batch_size} is larger than the {self.split} split "
                    f"({num_examples} examples) and drop_remainder=True would yield no batch; "
                    f"use batch_size <= {num_examples}."
                )
            return num_examples // self.batch_size
        return -(-num_examples // self.batch_size)


def check_request(request: object) -> BatchRequest:
    """Returns ``request``; a TypeError unless it is a :class:`BatchRequest`."""
    if not isinstance(request, BatchRequest):
        raise TypeError(
            "batches() takes a BatchRequest (e.g. BatchRequest.training(batch_size=64, seed=0)), "
            f"got {type(request).__name__}: {request!r}."
        )
    return request


@runtime_checkable
class DataSource(Protocol):
    """What the training application needs from a dataset.

    Attributes:
      name: the dataset's name (``data.name``).
      num_classes: ``K``, the number of labels.
      class_names: ``K`` names, in label-index order.
      image_size: the side of the square images the source yields.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    image_size: int

    def num_examples(self, split: str) -> int:
        """Number of examples in ``split`` (``"train"`` or ``"val"``)."""
        ...

    def batches(self, request: BatchRequest) -> Iterator[Batch]:
        """Yields this host's part of each global batch of one epoch, as ``request`` describes.

        Each batch is ``{"image": uint8 [b, H, W, 3], "labels": float32 [b, K] in {0, 1}
        (-1 = unknown), "mask": bool [b]}`` with ``b = request.local_batch_size``.
        """
        ...


def steps_per_epoch(source: DataSource, batch_size: int) -> int:
    """Number of training steps in one epoch: full global batches of the train split.

    Args:
      source: a :class:`DataSource`.
      batch_size: the global batch size.

    Returns:
      ``source.num_examples("train") // batch_size`` (the train split drops its remainder).

    Raises:
      ValueError: if ``batch_size < 1`` or larger than the train split.

    Examples:
      >>> steps_per_epoch(source, 128)  # doctest: +SKIP
      64
    """
    batch_size = _check_int("batch_size", batch_size, minimum=1)
    n = source.num_examples("train")
    if batch_size > n:
        raise ValueError(
            f"batch_size={batch_size} is larger than the train split of {source.name!r} "
            f"({n} examples); use batch_size <= {n}."
        )
    return n // batch_size


def _check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}).")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return value


def check_split(split: str) -> str:
    """Raises a ValueError unless ``split`` is ``"train"`` or ``"val"``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    return split


def epoch_order(num_examples: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The example order of one epoch: a pure function of ``(seed, epoch)``.

    Args:
      num_examples: size of the split.
      seed: any int (negative seeds are folded into ``[0, 2**64)``).
      epoch: the epoch number (>= 0).
      shuffle: False gives ``arange(num_examples)``.

    Returns:
      int64 array, a permutation of ``range(num_examples)``.
    """
    if not shuffle:
        return np.arange(num_examples, dtype=np.int64)
    # A list seed gives an independent stream per (seed, epoch) pair; mask so negative seeds work.
    rng = np.random.default_rng([int(seed) % (1 << 64), int(epoch)])
    return rng.permutation(num_examples).astype(np.int64)


def batch_indices(
    num_examples: int, request: BatchRequest
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(indices, mask)`` of this host's rows for each global batch ``request`` asks for.

    The indices of padding rows (``mask`` False) are 0, so gathering them is always valid; callers
    zero those rows (:func:`make_batch`). Checks the request against the split size eagerly
    (before the first ``next``).
    """
    num_batches = request.num_batches(num_examples)
    order = epoch_order(
        num_examples, seed=request.seed, epoch=request.epoch, shuffle=request.shuffle
    )

    def generate() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for b in range(request.start_batch, num_batches):
            yield host_slice(order, b, request)

    return generate()


def host_slice(
    order: np.ndarray, batch: int, request: BatchRequest
) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, mask)`` of this host's contiguous slice of global batch ``batch`` of an epoch.

    ``order`` is the epoch order (:func:`epoch_order`); positions past its end are padding rows
    (``mask`` False, index 0). Only the request's batch layout (``batch_size``,
    ``process_index``, ``process_count``) is used.
    """
    num_examples = len(order)
    local = request.local_batch_size
    lo = batch * request.batch_size + request.process_index * local
    pos = np.arange(lo, lo + local)
    mask = pos < num_examples
    idx = np.where(mask, order[np.minimum(pos, num_examples - 1)], 0)
    return idx, mask


def make_batch(images: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> Batch:
    """The batch of rows gathered at the indices of a host slice; padding rows zeroed.

    Padding rows (``mask`` False, gathered from index 0 by :func:`host_slice`) get all-zero images
    and labels, in copies (the given arrays are left as they are).

    Args:
      images: ``[b, H, W, 3]`` images of the rows.
      labels: ``[b, K]`` labels of the rows.
      mask: bool ``[b]``, False for padding rows.

    Returns:
      ``{"image": uint8, "labels": float32, "mask": mask}``, the arrays C-contiguous.
    """
    if not mask.all():
        images = images.copy()
        labels = labels.copy()
        images[~mask] = 0
        labels[~mask] = 0
    return {
        "image": np.ascontiguousarray(images, dtype=np.uint8),
        "labels": np.ascontiguousarray(labels, dtype=np.float32),
        "mask": mask,
    }


class IndexedSource:
    """A :class:`DataSource` whose examples can be fetched by index (random access).

    Subclasses set ``name``, ``num_classes``, ``class_names``, ``image_size`` and implement
    :meth:`num_examples` and :meth:`gather`; this class implements :meth:`batches`.
    ``prefetch`` > 0 gathers that many batches ahead in a background thread (useful when
    :meth:`gather` decodes files; an in-memory source does not need it).
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    image_size: int
    prefetch: int = 0

    def num_examples(self, split: str) -> int:
        raise NotImplementedError

    def gather(self, split: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(images uint8 [n, H, W, 3], labels float32 [n, K])`` of the given rows."""
        raise NotImplementedError

    def batches(self, request: BatchRequest) -> Iterator[Batch]:
        """See :class:`DataSource`."""
        request = check_request(request)
        plan = batch_indices(self.num_examples(request.split), request)

        def make(item: tuple[np.ndarray, np.ndarray]) -> Batch:
            idx, mask = item
            return make_batch(*self.gather(request.split, idx), mask)

        if self.prefetch > 0:
            return prefetch_map(make, plan, self.prefetch)
        return map(make, plan)


class ArraySource(IndexedSource):
    """A :class:`DataSource` over in-memory arrays.

    Args:
      name: dataset name.
      class_names: the ``K`` class names.
      train: ``(images uint8 [N, H, W, 3], labels [N, K] in {0, 1})`` of the train split.
      val: the same for the validation split.

    Examples:
      >>> src = ArraySource("toy", ("a", "b"), train=(x, y), val=(xv, yv))  # doctest: +SKIP
      >>> request = BatchRequest.training(batch_size=8, seed=0)
      >>> batch = next(src.batches(request))  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        class_names: Sequence[str],
        *,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray],
    ) -> None:
        self.name = name
        self.class_names = tuple(str(c) for c in class_names)
        self.num_classes = len(self.class_names)
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        sizes = set()
        for split, (images, labels) in (("train", train), ("val", val)):
            images = np.asarray(images)
            labels = np.asarray(labels, dtype=np.float32)
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(
                    f"{split} images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}."
                )
            if images.shape[1] != images.shape[2]:
                raise ValueError(f"{split} images must be square, got {images.shape[1:3]}.")
            if labels.shape != (images.shape[0], self.num_classes):
                raise ValueError(
                    f"{split} labels must have shape [N={images.shape[0]}, "
                    f"K={self.num_classes}], got {labels.shape}."
                )
            if images.shape[0] < 1:
                raise ValueError(f"the {split} split is empty.")
            sizes.add(images.shape[1])
            self._arrays[split] = (images, labels)
        if len(sizes) != 1:
            raise ValueError(f"train and val images must have the same size, got {sorted(sizes)}.")
        self.image_size = sizes.pop()

    def num_examples(self, split: str) -> int:
        """Number of examples in ``split``."""
        return self._arrays[check_split(split)][0].shape[0]

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole split as ``(images uint8 [N, H, W, 3], labels float32 [N, K])`` (no copy)."""
        return self._arrays[check_split(split)]

    def gather(self, split: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self._arrays[split]
        return images[indices], labels[indices]

    def replace_labels(self, split: str, labels: np.ndarray) -> None:
        """Replaces the labels of ``split`` (simulated annotation), same shape, float32."""
        images, current = self._arrays[check_split(split)]
        self._arrays[split] = (images, checked_replacement(current, labels))


def split_labels(source: DataSource, split: str) -> np.ndarray | None:
    """The ``[N, K]`` labels of a split, when the source holds them (shapes, folder)."""
    if hasattr(source, "labels"):
        return np.asarray(source.labels(split))
    if hasattr(source, "arrays"):
        return np.asarray(source.arrays(split)[1])
    return None


def checked_replacement(current: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``labels`` as float32, when they can replace ``current`` (the same ``[N, K]``)."""
    labels = np.asarray(labels, dtype=np.float32)
    if labels.shape != current.shape:
        raise ValueError(f"replacement labels must have shape {current.shape}, got {labels.shape}.")
    return labels


def prefetch_map(
    fn: Callable[[object], Batch], items: Iterator[object], depth: int
) -> Iterator[Batch]:
    """Applies ``fn`` to ``items`` in a background thread, keeping up to ``depth`` results ready.

    Order is preserved. The worker stops when the returned generator is closed or garbage
    collected; an exception in ``fn`` is re-raised in the consumer.
    """
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    pending: collections.deque[concurrent.futures.Future] = collections.deque()

    def generate() -> Iterator[Batch]:
        try:
            for item in items:
                pending.append(executor.submit(fn, item))
                if len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            executor.shutdown(wait=False, cancel_futures=True)

    return generate()
