"""A Grain input pipeline for sources that decode their images per batch.

The folder source, when its decoded images do not fit in memory, decodes each batch from its
files. That is what limits training speed on an accelerator, so the decoding runs in a Grain
pipeline (no TensorFlow):

* **The order is ours**, not Grain's: batch ``b`` of epoch ``e`` holds exactly the rows of
  :func:`asl_jax.data.base.batch_indices` (the same order as every other source, a pure function
  of ``(seed, epoch)``; this host's slice of each global batch).
* **One stream for the whole run.** The elements are this host's batches over all epochs, one after
  the other, so worker processes start once and keep decoding across epoch boundaries; asking
  for the batches of the next epoch continues the stream (see :class:`GrainBatches`).
* ``num_workers`` worker processes (``grain`` ``mp_prefetch``) decode whole batches, each
  worker every ``num_workers``-th one; 0 decodes in the training process, in threads (Pillow
  releases the GIL while decoding).
* **Checkpointable**: the iterator of an epoch has ``get_state()`` (Grain's own iterator state and
  the position, JSON-serialisable) and ``set_state()``; the training loop saves the state with each
  checkpoint and restores it on resume.
* A file that cannot be decoded stops the run with an :class:`ImageReadError` naming it, raised
  in the training process also when a worker process hit it.
"""

from __future__ import annotations

import collections.abc
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from asl_jax.data.base import (
    Batch,
    BatchRequest,
    check_request,
    epoch_order,
    host_slice,
    make_batch,
)

#: Grain needs a length; a stream of this many batches never ends in practice.
_ENDLESS = 1 << 48
#: Batches decoded ahead of the training step per worker process (in the training process: at
#: least this many, one per core).
PREFETCH_BATCHES = 2
#: Grain passes arrays of at least this many bytes through shared memory: none of ours.
_NO_SHARED_MEMORY = 1 << 62


class ImageReadError(RuntimeError):
    """An image of a batch could not be read; the message names the file."""


Loader = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def stream_key(request: BatchRequest) -> BatchRequest:
    """What fixes a stream's content (besides its start): the request at epoch 0, batch 0.

    One stream per split and batch layout; the epoch and start batch of a request are positions
    in it.
    """
    return request.replace(epoch=0, start_batch=0)


class _BatchPlan(collections.abc.Sequence):
    """Element ``i`` is this host's ``(indices, mask)`` of the ``origin + i``-th batch of the run.

    Picklable and cheap to send to a worker process: it holds no image, only the split size.
    """

    def __init__(self, num_examples: int, key: BatchRequest, num_batches: int, origin: int) -> None:
        self._n, self._key, self._num_batches, self._origin = num_examples, key, num_batches, origin
        self._cached: tuple[int, np.ndarray] | None = None  # (epoch, its order)

    def __len__(self) -> int:
        return _ENDLESS - self._origin

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        epoch, b = divmod(self._origin + int(i), self._num_batches)
        if self._cached is None or self._cached[0] != epoch:
            key = self._key
            self._cached = (
                epoch,
                epoch_order(self._n, seed=key.seed, epoch=epoch, shuffle=key.shuffle),
            )
        return host_slice(self._cached[1], b, self._key)


class _MakeBatch:
    """Decodes one batch in a worker (or the training process): the Grain map function."""

    def __init__(self, load: Loader) -> None:
        self._load = load

    def __call__(self, item: tuple[np.ndarray, np.ndarray]) -> Batch:
        idx, mask = item
        return make_batch(*self._load(idx), mask)


def _grain_flags_usable() -> None:
    """Lets Grain read its absl flags (their defaults) when no absl app parsed the command line.

    Grain reads ``--grain_*`` flags while iterating; outside ``absl.app.run`` (tests, notebooks,
    benchmarks) that raises ``UnparsedFlagAccessError``. Marking them present keeps every value
    (the default, or what was parsed) and parses nothing else.
    """
    from absl import flags

    if flags.FLAGS.is_parsed():
        return
    for name in list(flags.FLAGS):
        if name.startswith("grain_"):
            flags.FLAGS[name].present = True


def _worker_init(worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    _grain_flags_usable()


class _Stream:
    """This host's batches of one split from global batch ``origin`` on, decoded by Grain."""

    def __init__(self, plan: _BatchPlan, load: Loader, *, origin: int, num_workers: int) -> None:
        import grain

        _grain_flags_usable()
        self.origin, self.next, self.num_workers = origin, origin, num_workers
        # A thread decodes a whole batch, and Grain runs at most as many threads as batches it
        # holds ahead: in process, one batch per core; in a worker, one thread (a core each).
        threads = max(PREFETCH_BATCHES, os.cpu_count() or 1) if num_workers == 0 else 1
        ahead = max(threads, PREFETCH_BATCHES)
        dataset = (
            grain.MapDataset.source(plan)
            .map(_MakeBatch(load))
            .to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=ahead))
        )
        if num_workers > 0:
            # The batches come back pickled, not in shared memory: a shared-memory batch is
            # unlinked only when its array is garbage-collected (by a background thread), so
            # batches still alive or not yet collected at exit leaked shared memory objects. The
            # copy costs little next to decoding the batch.
            dataset = grain.experimental.WithOptionsIterDataset(
                dataset, grain.experimental.DatasetOptions(min_shm_size=_NO_SHARED_MEMORY)
            )
            dataset = dataset.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=num_workers, per_worker_buffer_size=PREFETCH_BATCHES
                ),
                worker_init_fn=_worker_init,
            )
        self._iterator = iter(dataset)

    def __next__(self) -> Batch:
        batch = next(self._iterator)
        self.next += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "next": self.next,
            "num_workers": self.num_workers,
            "grain": self._iterator.get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._iterator.set_state(state["grain"])
        self.next = int(state["next"])

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


class EpochBatches(Iterator[Batch]):
    """The batches of one epoch, read from a run-long :class:`_Stream`; checkpointable.

    ``get_state()`` returns a JSON-serialisable dict: the stream's position and Grain's state of
    its iterator. ``set_state(state)`` restores it on an iterator of the same epoch and start
    (the training loop resumes from the step of the checkpoint the state was saved with).
    """

    def __init__(self, owner: GrainBatches, key: BatchRequest, stream: _Stream, end: int) -> None:
        self._owner, self._key, self._stream, self._end = owner, key, stream, end

    def __next__(self) -> Batch:
        if self._stream.next >= self._end:
            raise StopIteration
        return next(self._stream)

    def get_state(self) -> dict[str, Any]:
        """The stream's state after the batches consumed so far."""
        return self._stream.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from ``state`` (saved by :meth:`get_state` at this iterator's position).

        Raises:
          ValueError: the state is of another position than the one this iterator starts at.
        """
        if int(state["next"]) != self._stream.next:
            raise ValueError(
                f"the saved data-pipeline state is at batch {state['next']} of the run, but "
                f"training resumes at batch {self._stream.next}: the state does not belong to "
                "this checkpoint."
            )
        if int(state["num_workers"]) == self._stream.num_workers:
            # Same pipeline: rebuild it from the saved origin and restore Grain's own state.
            self._stream = self._owner._restart(self._key, int(state["origin"]))
            self._stream.set_state(state)
        # Another data.num_workers: the stream already starts at the saved batch, and every
        # batch is a pure function of (seed, epoch, batch), so the data are the same.


class GrainBatches:
    """Mixin giving an indexed source a Grain-backed ``batches()`` (see the module docstring).

    The class using it sets ``num_workers`` and implements ``num_examples(split)`` and
    ``loader(split)`` (a picklable ``indices -> (images, labels)``).
    """

    num_workers: int = 0

    def loader(self, split: str) -> Loader:
        raise NotImplementedError

    def num_examples(self, split: str) -> int:
        raise NotImplementedError

    def grain_batches(self, request: BatchRequest) -> EpochBatches:
        """The batches of one epoch; continues the split's stream when it is at that position."""
        request = check_request(request)
        num_batches = request.num_batches(self.num_examples(request.split))
        key = stream_key(request)
        streams = self.__dict__.setdefault("_streams", {})
        stream = streams.get(key)
        start_batch = request.start_batch
        if request.shuffle:
            start = request.epoch * num_batches + start_batch
            reusable = stream is not None and stream.next == start
        else:  # every epoch is the same: any stream at the same batch of an epoch continues
            reusable = stream is not None and stream.next % num_batches == start_batch
            start = stream.next if reusable else start_batch
        if not reusable:
            stream = self._restart(key, start)
        end = start - start_batch + num_batches
        return EpochBatches(self, key, stream, end)

    def _restart(self, key: BatchRequest, origin: int) -> _Stream:
        streams = self.__dict__.setdefault("_streams", {})
        if key in streams:
            streams[key].close()
        num_examples = self.num_examples(key.split)
        plan = _BatchPlan(num_examples, key, key.num_batches(num_examples), origin)
        streams[key] = _Stream(
            plan, self.loader(key.split), origin=origin, num_workers=self.num_workers
        )
        return streams[key]

    def close(self) -> None:
        """Stops the worker processes of every stream."""
        for stream in self.__dict__.pop("_streams", {}).values():
            stream.close()
