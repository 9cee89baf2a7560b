"""Starting a run: the config resolved against its data and weights, programs, state, workdir.

:func:`start_run` is everything :func:`asl_jax.training.train_and_evaluate` does before the first
step. What depends on the data or the weights is resolved here, once, into the config the run
uses and records in ``config.json`` (so that a rerun makes the same choices and resumes):

- ``batch_size`` lowered to fit a train split smaller than one batch (with a warning);
- ``loss.class_weights='inverse_frequency'`` replaced by the weights of the train labels;
- ``model.normalization='auto'`` replaced by the normalisation the initial weights expect.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

import jax

from asl_jax.data import DataSource, create_source, split_labels, steps_per_epoch
from asl_jax.training import parallel, progress
from asl_jax.training.checkpoint import Checkpointer
from asl_jax.training.config import Config, ConfigError, fit_batch_size, validate_config
from asl_jax.training.lock import WorkdirLock, lock_workdir
from asl_jax.training.loss_registry import (
    INVERSE_FREQUENCY,
    parse_class_weights,
    resolve_class_weights,
)
from asl_jax.training.memory import check_batch_memory, check_dataset_memory
from asl_jax.training.programs import Programs, build_programs
from asl_jax.training.records import MetricsLog
from asl_jax.training.state import TrainState
from asl_jax.training.workdir import (
    refuse_other_config,
    restore_newest_readable,
    write_run_files,
)


@dataclasses.dataclass(frozen=True)
class Run:
    """What a run is set up with; the loop advances the train state beside it.

    Attributes:
      config: the config, resolved (what ``config.json`` holds).
      workdir: absolute path of the workdir.
      source: the data.
      mesh: the device mesh.
      programs: the compiled programs.
      ckpt: the workdir's checkpointer.
      log: ``metrics.jsonl`` (and TensorBoard), with the records of earlier sessions.
      epoch_steps: steps in one epoch.
      total_steps: steps of the whole run.
      elapsed_before: wall time of the earlier sessions of a resumed run.
      progress_bar: the progress bar (process 0, when ``progress_bar``).
      lock: the workdir's lock, held by the run (:mod:`asl_jax.training.lock`); :meth:`close`
        leaves it held, so that the run's last files are written under it: release it with
        ``run.lock.release()`` or a ``with run.lock:`` block.
      start_time: when this session started.
    """

    config: Config
    workdir: str
    source: DataSource
    mesh: jax.sharding.Mesh
    programs: Programs
    ckpt: Checkpointer
    log: MetricsLog
    epoch_steps: int
    total_steps: int
    elapsed_before: float
    progress_bar: progress.ProgressBar | None
    lock: WorkdirLock
    start_time: float = dataclasses.field(default_factory=time.time)

    def elapsed(self) -> float:
        """Wall time of the run so far, over all its sessions."""
        return self.elapsed_before + time.time() - self.start_time

    def close(self) -> None:
        if self.progress_bar is not None:
            self.progress_bar.close()
        self.log.close()
        self.ckpt.close()
        if hasattr(self.source, "close"):
            self.source.close()  # the input pipeline's worker processes


@dataclasses.dataclass(frozen=True)
class Start:
    """Where a session starts: the state, and for a resumed run the restored checkpoint's step
    and the input pipeline's saved position (None when the source has none)."""

    state: TrainState
    restored_step: int | None
    data_state: dict[str, Any] | None


def start_run(
    config: Config | Any,
    workdir: str | os.PathLike[str],
    *,
    source: DataSource | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[Run, Start]:
    """Checks the config, builds data and programs, and restores the latest checkpoint.

    The run holds the workdir's lock (``run.lock``) until the caller releases it.

    Raises:
      ConfigError: invalid config (naming the field) or unusable data.
      WorkdirBusyError: another process holds the workdir's lock (naming it).
      WorkdirConfigError: the workdir's checkpoints come from a config that changes results.
      UnreadableCheckpointError: the workdir has checkpoints, but none can be read.
    """
    workdir = os.path.abspath(os.fspath(workdir))
    mesh = parallel.make_mesh() if mesh is None else mesh
    config = validate_config(config, num_devices=mesh.size, process_count=jax.process_count())
    check_dataset_memory(config)  # before a shapes dataset of an absurd size is generated
    # Before anything in the workdir is read or written; a second run is refused at once.
    lock = lock_workdir(workdir)
    try:
        return _start_locked(config, workdir, source, mesh, lock)
    except BaseException:
        lock.release()
        raise


def _start_locked(
    config: Config,
    workdir: str,
    source: DataSource | None,
    mesh: jax.sharding.Mesh,
    lock: WorkdirLock,
) -> tuple[Run, Start]:
    """:func:`start_run` once the workdir is locked."""
    if source is None:
        try:
            source = create_source(config.data, seed=config.seed)
        except ValueError as e:  # bad folder rows, TFDS dataset not prepared...
            raise ConfigError(f"data.name={config.data.name!r}: {e}") from e
    config = resolve_config(config, source, mesh)
    check_batch_memory(config, num_devices=mesh.size, local_devices=len(mesh.local_devices))
    try:
        epoch_steps = steps_per_epoch(source, config.batch_size)
    except ValueError as e:
        raise ConfigError(f"batch_size={config.batch_size}: {e}") from e
    total_steps = config.total_steps(epoch_steps)
    programs = build_programs(
        config,
        num_classes=source.num_classes,
        image_size=source.image_size,
        total_steps=total_steps,
        mesh=mesh,
        steps_per_epoch=epoch_steps,
    )
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.max_checkpoints_to_keep,
        async_save=config.async_checkpoints,
    )
    try:
        start = _start(config, workdir, programs, ckpt, source)
    except BaseException:
        ckpt.close()
        raise
    is_main = jax.process_index() == 0
    if is_main:
        write_run_files(config, workdir, source.class_names)
    log = MetricsLog(
        os.path.join(workdir, "metrics.jsonl"),
        keep_until_step=start.restored_step,
        enabled=is_main,
        tensorboard=config.tensorboard,
        tensorboard_text=_json_text(config),
    )
    elapsed_before = next(
        (r["elapsed"] for r in reversed(log.records) if r.get("elapsed") is not None), 0.0
    )
    bar = None
    if is_main and config.progress_bar:
        bar = progress.ProgressBar(total_steps, start.restored_step or 0, config.batch_size)
    run = Run(
        config, workdir, source, mesh, programs, ckpt, log, epoch_steps, total_steps,
        elapsed_before, bar, lock,
    )  # fmt: skip
    return run, start


def _json_text(config: Config) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def _start(
    config: Config, workdir: str, programs: Programs, ckpt: Checkpointer, source: DataSource
) -> Start:
    """The initial state of a new run, or the newest readable checkpoint of a resumed one."""
    if ckpt.latest_step() is None:
        return Start(initial_state(config, programs, source), None, None)
    refuse_other_config(config, workdir, ckpt)
    state, step = restore_newest_readable(ckpt, programs.init(jax.random.key(config.seed)))
    return Start(state, step, ckpt.data_state(step))


def resolve_config(config: Config, source: DataSource, mesh: jax.sharding.Mesh) -> Config:
    """``config`` with what depends on the data and the weights resolved (module docstring)."""
    return _resolve_normalization(
        _resolve_class_weights(_fit_batch_size(config, source, mesh), source)
    )


def _fit_batch_size(config: Config, source: DataSource, mesh: jax.sharding.Mesh) -> Config:
    num_train = source.num_examples("train")
    multiple = math.lcm(mesh.size, jax.process_count())
    fitted = fit_batch_size(config.batch_size, num_train, multiple=multiple)
    if fitted == config.batch_size:
        return config
    progress.log(
        f"warning: batch_size={config.batch_size} is larger than the train split of "
        f"{source.name!r} ({num_train} examples); training with batch_size={fitted} "
        f"(the largest multiple of the {multiple} device(s) that fits; recorded in config.json)."
    )
    return dataclasses.replace(config, batch_size=fitted)


def _resolve_class_weights(config: Config, source: DataSource) -> Config:
    """Derives ``inverse_frequency`` weights from the train labels; checks their number."""
    if config.loss.class_weights == INVERSE_FREQUENCY:
        labels = split_labels(source, "train")
        if labels is None:
            raise ConfigError(
                f"loss.class_weights='inverse_frequency' needs the train labels, which "
                f"data.name={config.data.name!r} does not expose: give one weight per class"
            )
        resolved = resolve_class_weights(INVERSE_FREQUENCY, labels)
        progress.log(
            f"loss.class_weights='inverse_frequency': {resolved} (recorded in config.json)."
        )
        config = dataclasses.replace(
            config, loss=dataclasses.replace(config.loss, class_weights=resolved)
        )
    count = len(parse_class_weights(config.loss.class_weights))
    if count and count != source.num_classes:
        raise ConfigError(
            f"loss.class_weights has {count} weights; data.name={config.data.name!r} has "
            f"{source.num_classes} classes (one weight per class, in the order of classes.txt)"
        )
    return config


def _resolve_normalization(config: Config) -> Config:
    """Names the normalisation the initial weights expect in place of ``'auto'``."""
    from asl_jax.models.pretrained import resolve_normalization

    if config.model.normalization != "auto":
        return config
    try:
        resolved = resolve_normalization(config.model.name, config.model.pretrained)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return dataclasses.replace(
        config, model=dataclasses.replace(config.model, normalization=resolved)
    )


def initial_state(config: Config, programs: Programs, source: DataSource) -> TrainState:
    """The state a new run starts from: the model's initialisation, or ``model.pretrained``'s
    weights (a re-initialised head gets the key the model's own initialisation would use)."""
    key = jax.random.key(config.seed)
    if not config.model.pretrained:
        return programs.init(key)
    from asl_jax.models.pretrained import load_pretrained

    try:
        variables, note = load_pretrained(
            config.model.name,
            config.model.pretrained,
            num_classes=source.num_classes,
            rng=jax.random.split(key)[0],
            image_size=source.image_size,
            head=config.model.head,
            ml_decoder_groups=config.model.ml_decoder_groups,
        )
    except (OSError, ValueError, ImportError) as e:  # missing file, mismatch, no torch
        raise ConfigError(str(e)) from None
    progress.log(f"{note}; input normalisation {config.model.normalization!r}.")
    return programs.init(key, variables=variables)
