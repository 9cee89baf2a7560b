"""Orbax checkpoints of the train state (every array of it; the static fields are rebuilt).

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoint intact. On several hosts every process calls the
same methods; Orbax coordinates the writes.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from asl_jax.training.state import TrainState, checkpoint_items


class Checkpointer:
    """Saves and restores :class:`TrainState` s under ``directory`` (``<directory>/<step>/``).

    Args:
      directory: where checkpoints live (created if needed).
      max_to_keep: how many of the most recent checkpoints to keep.

    Example:
      >>> ckpt = Checkpointer("/tmp/run/checkpoints")
      >>> ckpt.save(state)                            # doctest: +SKIP
      >>> state = ckpt.restore(state)                 # latest checkpoint, same shardings
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_to_keep: int = 3):
        self.directory = os.path.abspath(os.fspath(directory))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def path(self, step: int | None = None) -> str:
        """Directory of the checkpoint of ``step`` (default: the latest)."""
        step = self.latest_step() if step is None else step
        return os.path.join(self.directory, str(step))

    def save(self, state: TrainState) -> int:
        """Saves ``state`` under its step (asynchronously; see :meth:`wait`). Returns the step."""
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return step
        self._manager.save(step, args=ocp.args.StandardSave(checkpoint_items(state)), force=True)
        return step

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
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return state.replace(**restored)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
