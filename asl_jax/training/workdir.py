"""A run's workdir: the config it was started with, its run files, and resuming from it.

A workdir holds ``config.json`` (the resolved config), ``classes.txt`` (the class of each model
output, one name a line), ``metrics.jsonl``, ``summary.json``, ``checkpoints/`` and ``plots/``.
Resuming restores the newest readable checkpoint; a workdir whose checkpoints come from a config
that changes results is refused (:class:`WorkdirConfigError`), and one whose checkpoints cannot be
read stops the run (:class:`~asl_jax.training.checkpoint.UnreadableCheckpointError`) instead of
starting over in a directory that holds results.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from asl_jax.training import progress
from asl_jax.training.checkpoint import Checkpointer, UnreadableCheckpointError, read_error
from asl_jax.training.config import Config, changed_result_fields
from asl_jax.training.records import read_json, write_json
from asl_jax.training.state import TrainState

CONFIG_FILE = "config.json"
CLASSES_FILE = "classes.txt"


class WorkdirConfigError(ValueError):
    """Raised when a workdir holds checkpoints of a run with a different config."""


def read_stored_config(workdir: str) -> Config:
    """The config of ``workdir/config.json``; a field added to the project since the run was
    started counts as what it meant for that run.

    Raises:
      OSError: the file cannot be read.
      ValueError: it is not JSON; ConfigError (a ValueError) when a field is invalid.
    """
    return Config.from_mapping(read_json(os.path.join(workdir, CONFIG_FILE)), stored=True)


def read_class_names(workdir: str) -> tuple[str, ...]:
    """The class names of ``workdir/classes.txt``, in the order of the model's outputs."""
    with open(os.path.join(workdir, CLASSES_FILE), encoding="utf-8") as f:
        return tuple(line.rstrip("\n") for line in f if line.strip())


def write_run_files(config: Config, workdir: str, class_names: Sequence[str]) -> None:
    """Writes ``config.json`` and ``classes.txt`` (atomically; the reopening commands read them)."""
    write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())
    classes_path = os.path.join(workdir, CLASSES_FILE)
    with open(f"{classes_path}.tmp", "w", encoding="utf-8") as f:
        f.writelines(f"{name}\n" for name in class_names)
    os.replace(f"{classes_path}.tmp", classes_path)


def refuse_other_config(config: Config, workdir: str, ckpt: Checkpointer | None = None) -> None:
    """Raises :class:`WorkdirConfigError` when ``workdir``'s run has other result fields.

    Only called for a workdir with checkpoints (a workdir without any starts over). The run's
    config is the one stored with its newest checkpoint (by ``ckpt``), or ``config.json`` for
    checkpoints saved without one. A missing or unreadable ``config.json`` is rewritten from
    the config of this session once it is checked against the stored one; without a stored
    one the run is refused.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    stored_step, stored = newest_stored_config(ckpt)
    try:
        recorded, problem = read_json(path), None
    except FileNotFoundError:
        recorded, problem = None, "is missing"
    except (OSError, ValueError) as e:  # garbage in it: JSONDecodeError, UnicodeDecodeError
        recorded, problem = None, f"cannot be read ({read_error(e, limit=120)})"
    if recorded is not None and not isinstance(recorded, dict):
        recorded, problem = None, "is not a JSON object"
    if stored is not None:
        reference = stored
        if problem:
            progress.log(
                f"warning: {path} {problem}; checked against the config stored with the "
                f"checkpoint of step {stored_step} and rewritten."
            )
    elif recorded is not None:
        reference = recorded
    else:
        raise WorkdirConfigError(
            f"{path} {problem}, and the checkpoints of {workdir} were saved without their "
            "config: resuming them could mix two runs. Put back that run's config.json, or use "
            "another workdir (or delete this one) to start over."
        )
    diff = changed_result_fields(reference, config)
    if diff:
        raise WorkdirConfigError(
            f"{workdir} holds checkpoints of a run with a different config "
            f"({'; '.join(diff)}). Resuming would mix two runs: use another workdir, "
            "rerun with the original config, or delete the workdir to start over."
        )


def newest_stored_config(ckpt: Checkpointer | None) -> tuple[int | None, dict | None]:
    """The config stored with the newest checkpoint that has one, and its step."""
    for step in sorted(ckpt.all_steps() if ckpt is not None else (), reverse=True):
        try:
            stored = ckpt.config(step)
        except Exception:  # damaged metadata: an older checkpoint may tell
            continue
        if stored is not None:
            return step, stored
    return None, None


def restore_newest_readable(ckpt: Checkpointer, state: TrainState) -> tuple[TrainState, int]:
    """The newest readable checkpoint and its step (the checkpointer has at least one).

    An unreadable newer checkpoint is moved aside with a one-line warning, and the run resumes
    from the one before: a damaged checkpoint costs one checkpoint interval.

    Raises:
      UnreadableCheckpointError: none can be read (nothing was moved or deleted).
    """
    try:
        state, step, set_aside = ckpt.restore_newest_readable(state)
    except UnreadableCheckpointError as e:
        raise UnreadableCheckpointError(
            f"{e}. Nothing was moved or deleted; to start over, use a new workdir or move "
            f"{ckpt.directory} away."
        ) from None
    for item in set_aside:
        progress.log(
            f"warning: the checkpoint of step {item.step} cannot be read ({item.reason}); "
            f"moved it to {item.moved_to} and resuming from an older one."
        )
    progress.log(f"Resuming from step {step} ({ckpt.path(step)}).")
    return state, step
