"""Orbax checkpoints of the train state (every array of it; the static fields are rebuilt).

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoint intact. On several hosts every process calls the
same methods; Orbax coordinates the writes and the deletion of old checkpoints.

Retention. Besides the ``max_to_keep`` newest checkpoints, the one of the best value of each
metric of ``keep_best`` (a tie goes to the later step) is kept. The metrics of a checkpoint are
given to :meth:`Checkpointer.save` and stored with it by Orbax, so the choice survives a restart.

Asynchronous saves. By default (``async_save=True``) :meth:`Checkpointer.save` returns once the
arrays are copied off the devices and Orbax writes them in a background thread while training
goes on; the write of step ``t`` becomes visible (renamed to ``<t>``) only when complete. A new
save first waits for the previous one (Orbax does), so two saves never race, and
:meth:`Checkpointer.wait` / :meth:`Checkpointer.close` block until the last one is on disk: the
training loop calls them before it reports success or an interruption, so a run never ends with
a checkpoint half-written. ``async_save=False`` makes every save block until written.

Orbax v1. ``orbax.checkpoint.v1.training.Checkpointer`` (an experimental API) wraps the same
``CheckpointManager`` (same preservation policies, async machinery and multi-host barriers), so it
would add no guarantee to the ones above: this module uses the stable ``CheckpointManager`` API.

Failed saves. A save that cannot start or complete (a read-only or full disk, no permission, a
vanished directory) raises :class:`CheckpointSaveError`, whose one-line message names the step
that was not saved, the cause and the last checkpoint on disk, which a rerun resumes from. Before
each save the directory is checked (a directory can be created in it; its device has at least
the size of the last checkpoint free), so the common faults are caught before Orbax starts its
threads; a failure inside Orbax (a disk filled during the write) is reported the same way, the
Orbax threads left waiting for it are released, and Orbax's own tracebacks of it are not logged.
The config a checkpoint was trained with is stored in its metadata (:meth:`Checkpointer.config`).

Damage. A checkpoint can still be unreadable (a file truncated by a full disk, a storage fault):
:meth:`Checkpointer.restore_newest_readable` then moves it aside to ``<step>.unreadable`` (kept
for inspection; Orbax only sees integer names) and restores the next newest.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import math
import os
import re
import shutil
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from asl_jax.training.state import TrainState, checkpoint_items

#: The metrics whose best checkpoint the training loop keeps (validation mAP, regular and EMA).
BEST_METRICS = ("map", "map_ema")

#: Suffix of the name of a checkpoint directory that could not be read.
UNREADABLE_SUFFIX = ".unreadable"


class UnreadableCheckpointError(RuntimeError):
    """Raised when no checkpoint of a directory can be read."""


class CheckpointSaveError(RuntimeError):
    """Raised when a checkpoint cannot be written (read-only or full disk, no permission...).

    Attributes:
      step: the step that was not saved (-1 when unknown).
      last_step: the newest checkpoint on disk (None when there is none).
    """

    def __init__(self, directory: str, step: int, cause: str, last_step: int | None):
        self.step, self.last_step = step, last_step
        if last_step is None:
            where = "no checkpoint is on disk yet (a rerun starts from step 0)"
        else:
            where = (
                f"the last checkpoint on disk is {os.path.join(directory, str(last_step))} "
                f"(step {last_step}), which a rerun of the same command resumes from once "
                "the disk has space and can be written"
            )
        what = "a checkpoint" if step < 0 else f"the checkpoint of step {step}"
        super().__init__(f"{what} was not saved ({cause}); {where}")


@dataclasses.dataclass(frozen=True)
class SetAside:
    """A checkpoint that could not be read and was moved out of Orbax's sight.

    Attributes:
      step: its step.
      reason: the read error, on one line.
      moved_to: the directory it was renamed to.
    """

    step: int
    reason: str
    moved_to: str


def _metric(key: str, metrics: Mapping[str, float]) -> float:
    """A checkpoint's value of ``key`` (checkpoints without it rank below all others)."""
    return float(metrics.get(key, -math.inf))


def _retention(max_to_keep: int, keep_best: Sequence[str]) -> policies.PreservationPolicy:
    # BestN sorts stably by the metric, in step order, and keeps the last: a tie goes to the
    # later step.
    return policies.AnyPreservationPolicy(
        [policies.LatestN(n=max_to_keep)]
        + [
            policies.BestN(
                get_metric_fn=functools.partial(_metric, key),
                n=1,
                keep_checkpoints_without_metrics=False,
            )
            for key in keep_best
        ]
    )


def read_error(error: BaseException, limit: int = 300) -> str:
    """``error`` on one line of at most about ``limit`` characters.

    TensorStore appends kilobytes of JSON spec (dropped); a long message keeps its beginning
    (what was read) and its end (the cause).
    """
    text = re.split(r"\s*\[tensorstore_spec", " ".join(str(error).split()), maxsplit=1)[0]
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    half = limit // 2
    return text if len(text) <= limit else f"{text[:half]} … {text[-half:]}"


def _save_cause(error: BaseException) -> str:
    """The cause of a failed save on one line: the OS error of the chain when there is one."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            where = f": {seen.filename}" if seen.filename else ""
            return f"{os.strerror(seen.errno)}{where}"
        seen = seen.__cause__ or seen.__context__
    return read_error(error)


def _is_save_noise(record: logging.LogRecord) -> bool:
    """An Orbax log record of a failed save (with its traceback), which the caller reports."""
    if record.levelno < logging.ERROR or not record.exc_info or not record.exc_info[1]:
        return False
    return f"{os.sep}orbax{os.sep}" in record.pathname


class _SaveNoiseFilter(logging.Filter):
    """Drops Orbax's tracebacks of a failed save and keeps their error for the one-line report."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[BaseException] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_save_noise(record):
            self.errors.append(record.exc_info[1])  # type: ignore[index]
            del self.errors[:-4]
            return False
        return True


_SAVE_NOISE = _SaveNoiseFilter()


def _quiet_save_noise() -> None:
    """Installs :data:`_SAVE_NOISE` on the loggers Orbax reports through (once)."""
    for name in ("absl", "orbax"):
        logger = logging.getLogger(name)
        if _SAVE_NOISE not in logger.filters:
            logger.addFilter(_SAVE_NOISE)


def _release_waiting_orbax_threads(timeout: float = 5.0) -> None:
    """Ends the Orbax threads of a failed save that wait for a signal that will never come.

    When the temporary directory of a save cannot be created, Orbax's writer threads keep
    waiting for its "directory created" signal (for the coordination timeout, minutes), and
    Python's exit waits for them. Each is cancelled and given its signal, so that it returns
    without writing. Orbax internals: where they differ, nothing is done.
    """
    try:
        from orbax.checkpoint._src.futures import future
    except ImportError:  # pragma: no cover - another Orbax layout
        return
    thread_type = getattr(future, "_SignalingThread", None)
    if thread_type is None:  # pragma: no cover
        return
    waiting = [t for t in threading.enumerate() if isinstance(t, thread_type) and t.is_alive()]
    for thread in waiting:
        try:
            thread.cancel()
            future.set_signals(thread._receive_signals, operation_id=thread._operation_id)
        except Exception:  # pragma: no cover - best effort: the error is reported anyway
            pass
    for thread in waiting:
        threading.Thread.join(thread, timeout)


def _tree_size(path: str) -> int:
    """Bytes of the files under ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _all_true(flag: bool) -> bool:
    """True on every process when ``flag`` is True on every process."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).all())


def _is_read_noise(exc: BaseException | None) -> bool:
    """A report of a read that ended after its restore failed (see :func:`_quiet_read_noise`)."""
    if isinstance(exc, RuntimeError):
        return str(exc) == "Event loop is closed"
    return isinstance(exc, ValueError) and "[tensorstore_spec=" in str(exc)


class _ReadNoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # asyncio says "Future exception ..." or "Task exception was never retrieved".
        message = record.getMessage()
        return not ("exception was never retrieved" in message and _is_read_noise(exc))


def _quiet_read_noise() -> None:
    """Silences the reports of the reads still running when a restore failed.

    When one array of a checkpoint cannot be read, Orbax closes the event loop of the restore
    while TensorStore's other reads are running. Each then reports "Event loop is closed"
    through ``sys.unraisablehook`` or, from TensorStore's callback threads, ``sys.excepthook``,
    and each failed one "Future (or Task) exception was never retrieved" through the
    ``asyncio`` logger: dozens of tracebacks, some after the restore has raised, for an error
    that the caller reports once. Only those reports are dropped, from then on.
    """
    previous = sys.unraisablehook
    if getattr(previous, "quiets_read_noise", False):
        return

    def hook(unraisable: Any) -> None:
        if not _is_read_noise(unraisable.exc_value):
            previous(unraisable)

    previous_excepthook = sys.excepthook

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not _is_read_noise(value):
            previous_excepthook(kind, value, tb)

    hook.quiets_read_noise = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    sys.excepthook = excepthook
    logging.getLogger("asyncio").addFilter(_ReadNoiseFilter())


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class Checkpointer:
    """Saves and restores :class:`TrainState` s under ``directory`` (``<directory>/<step>/``).

    Args:
      directory: where checkpoints live (created if needed).
      max_to_keep: how many of the most recent checkpoints to keep.
      keep_best: metric names (higher is better) whose best checkpoint is kept as well, among
        the metrics given to :meth:`save`.
      async_save: write checkpoints in the background (see the module docstring); False makes
        :meth:`save` return only once the checkpoint is on disk.

    Examples:
      >>> ckpt = Checkpointer("/tmp/run/checkpoints")
      >>> ckpt.save(state, metrics={"map": 0.5})     # doctest: +SKIP
      >>> state = ckpt.restore(state)                 # latest checkpoint, same shardings
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_to_keep: int = 3,
        keep_best: Sequence[str] = BEST_METRICS,
        async_save: bool = True,
    ):
        self.directory = os.path.abspath(os.fspath(directory))
        self._keep_best = tuple(keep_best)
        options = ocp.CheckpointManagerOptions(
            create=True,
            preservation_policy=_retention(max_to_keep, self._keep_best),
            # Orbax stores the metrics of a save only when a best_fn is set; the retention
            # itself is the policy above.
            best_fn=functools.partial(_metric, self._keep_best[0]) if self._keep_best else None,
            enable_async_checkpointing=bool(async_save),
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._pending: int | None = None  # the step of a save not yet waited for
        self._failed = False  # a save failed and was reported: Orbax's error is not raised again
        self._sizes: dict[int, int] = {}  # bytes of the checkpoints on disk, by step

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def path(self, step: int | None = None) -> str:
        """Directory of the checkpoint of ``step`` (default: the latest)."""
        step = self.latest_step() if step is None else step
        return os.path.join(self.directory, str(step))

    def save(
        self,
        state: TrainState,
        metrics: Mapping[str, float] | None = None,
        data_state: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> int:
        """Saves ``state`` under its step (in the background unless ``async_save=False``: see
        :meth:`wait`). Returns the step.

        It first waits for the previous save to finish, then blocks only while the arrays are
        copied to host memory: the caller may then donate or overwrite ``state``.

        Args:
          state: the state to save.
          metrics: the evaluation of this state, if any (``keep_best`` ranks by it; finite
            values only are stored, a missing one ranks last).
          data_state: the input pipeline's iterator state (JSON-serialisable), stored in the
            checkpoint's metadata; :meth:`data_state` reads it back.
          config: the config the state was trained with (JSON-serialisable), stored in the
            checkpoint's metadata; :meth:`config` reads it back.

        Raises:
          CheckpointSaveError: this save, or the previous one still being written, failed.
        """
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return step
        self.wait()  # a failure of the previous save is reported as that step's
        self._check_can_save(step)
        # Always a dict (possibly empty): Orbax warns about a save without metrics.
        stored = {
            k: float(v)
            for k, v in (metrics or {}).items()
            if v is not None and math.isfinite(float(v))
        }
        custom = {}
        if data_state is not None:
            custom["data_state"] = dict(data_state)
        if config is not None:
            custom["config"] = dict(config)
        _quiet_save_noise()
        try:
            self._manager.save(
                step,
                args=ocp.args.StandardSave(checkpoint_items(state)),
                metrics=stored,
                force=True,
                custom_metadata=custom or None,
            )
        except Exception as e:  # OSError, TensorStore and Orbax errors alike
            raise self._save_failed(step, e) from None
        self._pending = step
        return step

    def _steps_on_disk(self) -> list[int]:
        """The steps whose checkpoint directory is complete on disk (Orbax renames a complete
        save to its step), newest first."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return sorted((int(n) for n in names if n.isdigit()), reverse=True)

    def _check_can_save(self, step: int) -> None:
        """Raises :class:`CheckpointSaveError` when the directory cannot take a checkpoint: a
        directory cannot be created in it, or its device has less free space than the last
        checkpoint took (Orbax writes the new one before it deletes an old one)."""
        problem: str | None = None
        probe = os.path.join(
            self.directory, f".write-check-{os.getpid()}-{jax.process_index()}-{step}"
        )
        try:
            os.mkdir(probe)
            os.rmdir(probe)
        except OSError as e:  # named after the directory, not the probe
            problem = f"{os.strerror(e.errno)}: {self.directory}" if e.errno else _save_cause(e)
        else:
            last = next(iter(self._steps_on_disk()), None)
            if last is not None:
                if last not in self._sizes:
                    self._sizes[last] = _tree_size(os.path.join(self.directory, str(last)))
                needed = self._sizes[last]
                free = shutil.disk_usage(self.directory).free
                if free < needed:
                    problem = (
                        f"{os.strerror(errno.ENOSPC)}: {self.directory} has {free / 1e6:.1f} MB "
                        f"free, the last checkpoint took {needed / 1e6:.1f} MB"
                    )
        if not _all_true(problem is None):
            raise self._save_failed(step, problem or "it cannot be written on another process")

    def _save_failed(self, step: int, cause: BaseException | str) -> CheckpointSaveError:
        """The error of a failed save of ``step``; releases the Orbax threads still waiting."""
        self._failed, self._pending = True, None
        _release_waiting_orbax_threads()
        if not isinstance(cause, str):
            cause = _save_cause(cause)
        last = next((s for s in self._steps_on_disk() if s != step), None)
        return CheckpointSaveError(self.directory, step, cause, last)

    def data_state(self, step: int) -> dict[str, Any] | None:
        """The input pipeline state saved with checkpoint ``step`` (None when it has none)."""
        custom = self._manager.metadata(step).custom_metadata or {}
        return custom.get("data_state")

    def config(self, step: int) -> dict[str, Any] | None:
        """The config saved with checkpoint ``step`` (None for a checkpoint saved without one)."""
        custom = self._manager.metadata(step).custom_metadata or {}
        config = custom.get("config")
        return dict(config) if isinstance(config, Mapping) else None

    def restore(self, state: TrainState, step: int | None = None) -> TrainState:
        """Restores checkpoint ``step`` (default: latest) into the structure of ``state``.

        Args:
          state: a state with the right structure, dtypes and shardings (e.g. freshly
            initialised); its arrays are not used.
          step: the checkpoint to load; None = the latest.

        Returns:
          ``state`` with every array replaced by the checkpointed one.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, checkpoint_items(state))
        _quiet_read_noise()  # before: some reports come while the failing restore still runs
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return state.replace(**restored)

    def restore_newest_readable(self, state: TrainState) -> tuple[TrainState, int, list[SetAside]]:
        """Restores the newest checkpoint that can be read; moves the newer ones aside.

        The checkpoints are tried newest first. Those that fail are renamed to
        ``<step>.unreadable`` only once an older one has been read: when none can be read (a
        state of another structure, say) nothing is moved. Every process reads the same files;
        a checkpoint counts as read when it was read on every process, so that all resume from
        the same step. Process 0 renames, the others wait for it.

        Returns:
          The restored state, its step and the checkpoints set aside (newest first).

        Raises:
          UnreadableCheckpointError: there is no checkpoint, or none can be read (the message
            lists each step with its error).
        """
        failed: list[tuple[int, str]] = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                restored, error = jax.block_until_ready(self.restore(state, step)), None
            except Exception as e:  # TensorStore, Orbax and JSON errors alike
                restored, error = None, read_error(e)
            if _all_true(error is None):
                return restored, step, self._set_aside(failed)
            failed.append((step, error or "unreadable on another process"))
        errors = "; ".join(f"step {step}: {reason}" for step, reason in failed)
        raise UnreadableCheckpointError(
            f"no checkpoint in {self.directory} can be read ({errors or 'there is none'})"
        )

    def _set_aside(self, failed: list[tuple[int, str]]) -> list[SetAside]:
        if not failed:
            return []
        _barrier("asl_jax.checkpoint.before_set_aside")  # every process names the same targets
        moved = []
        for step, reason in failed:
            target, n = f"{self.path(step)}{UNREADABLE_SUFFIX}", 1
            while os.path.exists(target):  # an earlier run set this step aside too
                n += 1
                target = f"{self.path(step)}{UNREADABLE_SUFFIX}-{n}"
            moved.append(SetAside(step, reason, target))
        _barrier("asl_jax.checkpoint.set_aside_named")
        if jax.process_index() == 0:
            for item in moved:
                os.rename(self.path(item.step), item.moved_to)
        _barrier("asl_jax.checkpoint.set_aside_done")
        self._manager.reload()
        return moved

    def is_saving(self) -> bool:
        """Whether a background save is still being written."""
        return bool(self._manager.is_saving_in_progress())

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk.

        Raises:
          CheckpointSaveError: the pending save failed, or it finished without its checkpoint
            on disk.
        """
        if self._failed:  # reported once; Orbax would raise the same error again
            return
        step, self._pending = self._pending, None
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise self._save_failed(-1 if step is None else step, e) from None
        if step is not None and not _all_true(os.path.isdir(self.path(step))):
            dropped = _SAVE_NOISE.errors[-1] if _SAVE_NOISE.errors else None
            cause = _save_cause(dropped) if dropped is not None else "Orbax did not finalize it"
            raise self._save_failed(step, cause)

    def close(self) -> None:
        """Waits for the pending save, then releases Orbax's threads (also after a failed save).

        Raises:
          CheckpointSaveError: the pending save failed (see :meth:`wait`).
        """
        try:
            self.wait()
        finally:
            if self._failed:
                _release_waiting_orbax_threads()
                # Orbax's close() would raise the failed save's error again before closing.
                for name in (
                    "_checkpointer",
                    "_non_blocking_metadata_store",
                    "_blocking_metadata_store",
                    "_checkpoint_deleter",
                ):
                    try:
                        getattr(self._manager, name).close()
                    except Exception:  # best effort: the failure was reported
                        pass
            else:
                self._manager.close()
