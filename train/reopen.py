"""Reopening a trained run: its config, class names and a checkpoint, for the commands that
read a workdir (``train.evaluate``, ``train.predict``, ``train.export``).

A workdir written by ``python -m train`` (or by one loss of ``train.compare``) is restored into the
programs its config builds; what cannot be used is a :class:`RunError` whose message says what is
wrong and what to do, naming the command-line flags that choose another checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the commands parse their flags before JAX starts
    from asl_jax.training.config import Config


class RunError(Exception):
    """A workdir cannot be used as asked (missing, no checkpoint, no such step...).

    The message says what is wrong and what to do; the commands print it and exit with status 1.
    """


@dataclasses.dataclass
class OpenRun:
    """A trained run, reopened from its workdir by :func:`open_run`.

    Attributes:
      workdir: absolute path of the workdir.
      config: the run's typed config (from ``config.json``).
      class_names: the class names, in label-index order.
      step: the step of the restored checkpoint.
      checkpoint: the checkpoint's directory.
      state: the restored :class:`~asl_jax.training.TrainState`.
      programs: the run's :class:`~asl_jax.training.Programs` (``programs.eval`` gives the
        probabilities of the regular and the EMA model).
      mesh: the device mesh the state lives on.
      summary: ``summary.json`` (None when the run did not write one).
    """

    workdir: str
    config: Config
    class_names: tuple[str, ...]
    step: int
    checkpoint: str
    state: Any
    programs: Any
    mesh: Any
    summary: dict[str, Any] | None


def read_workdir_config(workdir: str) -> Config:
    """The typed config of ``workdir/config.json`` (fields added since count as what they meant
    for that run); when that file is missing or unreadable, the config stored with the newest
    checkpoint (with a warning).

    Raises:
      RunError: no such directory, an invalid ``config.json``, or none that can be read and no
        checkpoint that stores its config.
    """
    from asl_jax.training.checkpoint import read_error
    from asl_jax.training.config import Config, ConfigError
    from asl_jax.training.workdir import CONFIG_FILE, read_stored_config

    if not os.path.isdir(workdir):
        raise RunError(
            f"workdir {workdir} does not exist (train with: python -m train --workdir=…)"
        )
    path = os.path.join(workdir, CONFIG_FILE)
    problem = "not found"
    if os.path.isfile(path):
        try:
            return read_stored_config(workdir)
        except ConfigError as e:
            raise RunError(f"{path}: {e}") from e
        except (OSError, ValueError, TypeError, AttributeError) as e:  # not JSON, not an object
            problem = f"cannot be read ({read_error(e, limit=120)})"
    step, stored = _checkpoint_config(workdir)
    if stored is None:
        if problem == "not found":
            raise RunError(f"{path} not found: {workdir} is not a workdir of python -m train")
        raise RunError(
            f"{path} {problem}, and no checkpoint of {workdir} stores the run's config; put "
            "back the run's config.json"
        )
    print(
        f"warning: {path} {problem}; using the config stored with the checkpoint of step {step}",
        file=sys.stderr,
        flush=True,
    )
    try:
        return Config.from_mapping(stored, stored=True)
    except ConfigError as e:
        raise RunError(f"the config stored with the checkpoint of step {step}: {e}") from e


def _checkpoint_config(workdir: str) -> tuple[int | None, dict[str, Any] | None]:
    """The config stored with the newest checkpoint of ``workdir`` that has one, and its step."""
    from asl_jax.training.checkpoint import Checkpointer
    from asl_jax.training.workdir import newest_stored_config

    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):  # Checkpointer() would create it
        return None, None
    ckpt = Checkpointer(ckpt_dir)
    try:
        return newest_stored_config(ckpt)
    finally:
        ckpt.close()


def read_class_names(workdir: str) -> tuple[str, ...]:
    """The run's class names: ``classes.txt`` of the workdir (written by the training loop)."""
    from asl_jax.training.workdir import CLASSES_FILE
    from asl_jax.training.workdir import read_class_names as read

    if not os.path.isfile(os.path.join(workdir, CLASSES_FILE)):
        raise RunError(f"{workdir} has no classes.txt: it is not a workdir written by training")
    return read(workdir)


def build_source(config: Config) -> Any:
    """The data source of ``config`` (``RunError`` when it cannot be built, e.g. data moved)."""
    from asl_jax.data import create_source

    try:
        return create_source(config.data, seed=config.seed)
    except (ValueError, OSError) as e:
        raise RunError(f"cannot build the data source data.name={config.data.name!r}: {e}") from e


def data_mesh(batch_size: int) -> Any:
    """A mesh over as many local devices as divide ``batch_size`` (evaluation on any machine).

    The training mesh may have had more (or other) devices; the restored state is replicated, so
    any number of devices that splits the batch evenly works.
    """
    import jax

    from asl_jax.training.parallel import make_mesh

    devices = jax.local_devices()
    n = max(d for d in range(1, len(devices) + 1) if batch_size % d == 0)
    return make_mesh(devices[:n])


def _checkpoint_step(
    steps: list[int],
    ckpt_dir: str,
    summary: dict[str, Any] | None,
    summary_path: str,
    *,
    step: int | None,
    best: bool,
    ema: bool,
) -> int:
    """The checkpoint step :func:`open_run` restores (``RunError`` naming the kept steps)."""
    if not steps:
        raise RunError(f"no checkpoint in {ckpt_dir}")
    if best:
        key = "best_map_ema" if ema else "best_map"
        if summary is None or summary.get(f"{key}_step") is None:
            raise RunError(
                f"--best needs the evaluations of {summary_path}, which is missing or has "
                "none; give --step or omit it for the latest checkpoint"
            )
        step = int(summary[f"{key}_step"])
        if step not in steps:
            # Training keeps the best checkpoints; this one was removed or set aside since.
            raise RunError(
                f"the best {'EMA ' if ema else ''}mAP ({100 * summary[key]:.2f}%) was "
                f"evaluated at step {step}, but {ckpt_dir} has no checkpoint of that step "
                f"(checkpoints of steps {', '.join(map(str, steps))}); give --step"
            )
    elif step is None:
        step = steps[-1]
    elif step not in steps:
        raise RunError(
            f"no checkpoint of step {step} in {ckpt_dir} (checkpoints of steps "
            f"{', '.join(map(str, steps))})"
        )
    return step


def _restore_step(ckpt: Any, state: Any, step: int) -> Any:
    """``ckpt.restore(state, step)``, with a one-line ``RunError`` when it cannot be read."""
    from asl_jax.training.checkpoint import read_error

    try:
        return ckpt.restore(state, step)
    except Exception as e:  # TensorStore / Orbax read errors of damaged files
        others = [s for s in ckpt.all_steps() if s != step]
        hint = f"give --step with one of {', '.join(map(str, others))}" if others else "retrain"
        raise RunError(
            f"the checkpoint of step {step} ({ckpt.path(step)}) cannot be read "
            f"({read_error(e)}); {hint}"
        ) from None


def open_run(
    workdir: str | os.PathLike[str],
    *,
    step: int | None = None,
    best: bool = False,
    ema: bool = False,
    batch_size: int | None = None,
) -> OpenRun:
    """Reopens a trained run: config, class names, programs and a restored checkpoint.

    Args:
      workdir: a workdir of ``python -m train`` (or of one loss of ``python -m train.compare``).
      step: the checkpoint to restore (default: the latest).
      best: restore the checkpoint of the best validation mAP of ``summary.json`` (of the EMA
        model when ``ema``); exclusive with ``step``.
      ema: with ``best``, use the EMA model's best step.
      batch_size: the batch size the caller will feed ``programs.eval`` (default: the run's
        evaluation batch size); the mesh is chosen so that it divides it.

    Returns:
      An :class:`OpenRun`.

    Raises:
      RunError: missing workdir or config, no checkpoint, the step asked for has no checkpoint
        (the message lists those that exist), or its checkpoint cannot be read.
    """
    import jax

    from asl_jax.training.checkpoint import Checkpointer
    from asl_jax.training.programs import build_programs
    from asl_jax.training.records import read_json

    if step is not None and best:
        raise ValueError("give either step or best=True, not both")
    workdir = os.path.abspath(os.fspath(workdir))
    config = read_workdir_config(workdir)
    summary_path = os.path.join(workdir, "summary.json")
    summary = read_json(summary_path) if os.path.isfile(summary_path) else None

    ckpt_dir = os.path.join(workdir, "checkpoints")
    # Checked before Checkpointer(), which would create the directory.
    if not os.path.isdir(ckpt_dir):
        raise RunError(f"no checkpoint in {workdir} (no checkpoints/ directory)")
    ckpt = Checkpointer(ckpt_dir)
    try:
        step = _checkpoint_step(
            sorted(ckpt.all_steps()), ckpt_dir, summary, summary_path, step=step, best=best, ema=ema
        )
        class_names = read_class_names(workdir)
        batch_size = batch_size or config.evaluation_batch_size
        mesh = data_mesh(batch_size)
        # total_steps only shapes the learning-rate schedule, not the optimizer state's
        # structure that the checkpoint is restored into; the run's own value keeps the
        # compiled programs shared with training when both happen in one process.
        total_steps = int((summary or {}).get("total_steps") or config.num_steps or 1)
        programs = build_programs(
            config,
            num_classes=len(class_names),
            image_size=config.data.image_size,
            total_steps=total_steps,
            mesh=mesh,
        )
        state = _restore_step(ckpt, programs.init(jax.random.key(config.seed)), step)
        return OpenRun(
            workdir=workdir,
            config=config,
            class_names=class_names,
            step=step,
            checkpoint=ckpt.path(step),
            state=state,
            programs=programs,
            mesh=mesh,
            summary=summary,
        )
    finally:
        ckpt.close()
