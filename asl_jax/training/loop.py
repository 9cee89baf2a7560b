"""The training loop: data, steps, evaluation, logging, checkpoints, resume and interruption.

:func:`train_and_evaluate` runs a whole training job in a workdir. It is what ``python -m train``
calls, and it can be called from Python (tests, notebooks, ``train.compare``).

Resuming. The loop checkpoints every ``checkpoint_every`` steps, at the end, and when it is
interrupted (SIGINT / SIGTERM: the handler only sets a flag; the loop stops at the next step
boundary, saves and returns). Rerunning the same command restores the latest checkpoint and
continues with the same data order (the batches of an epoch are a pure function of ``(seed,
epoch)``; the loop asks the source for ``epoch = step // steps_per_epoch`` starting at
``step % steps_per_epoch``) and the same randomness (step ``t`` uses ``fold_in(rng, t)``), so it
ends with the same state as an uninterrupted run. A workdir whose checkpoints come from a config
that changes results is refused (see :func:`asl_jax.training.config.changed_result_fields`).
A latest checkpoint that cannot be read (truncated files) is moved aside to
``checkpoints/<step>.unreadable`` and the run resumes from the newest readable one; when none can
be read the run stops (:class:`UnreadableCheckpointError`) instead of starting over.

Checkpoints kept. The ``max_checkpoints_to_keep`` latest, plus those of the best validation mAP
and of the best EMA validation mAP (a tie goes to the later step): an evaluation that sets a best
is checkpointed even between checkpoint steps.

Non-finite steps. A step whose loss or gradient is not finite leaves the state unchanged (only the
step and skip counters advance); ``max_consecutive_nonfinite`` such steps in a row stop the run
with :class:`NonFiniteError`, naming the step and the last good checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import optax

from asl_jax.data import BatchRequest, DataSource, create_source, steps_per_epoch
from asl_jax.losses import known_labels_mask
from asl_jax.models import MODELS, create_model, default_normalization
from asl_jax.training import parallel, progress
from asl_jax.training.checkpoint import BEST_METRICS, Checkpointer, UnreadableCheckpointError
from asl_jax.training.config import (
    ConfigError,
    changed_result_fields,
    eval_interval,
    fit_batch_size,
    validate_config,
)
from asl_jax.training.evaluation import eval_batch_size, evaluate
from asl_jax.training.loss_registry import (
    INVERSE_FREQUENCY,
    parse_class_weights,
    resolve_class_weights,
)
from asl_jax.training.memory import check_batch_memory, check_dataset_memory
from asl_jax.training.optim import create_optimizer, create_schedule, freeze_for, head_mask
from asl_jax.training.records import MetricsLog, read_json, summarize, write_json
from asl_jax.training.state import TrainState, create_train_state
from asl_jax.training.step import AugmentConfig, LossConfig, eval_step, train_step

#: Keys of a train record in metrics.jsonl (besides "kind", "step", "epoch", "elapsed").
#: Fields of the records that measure wall-clock time (they differ between identical runs).
TIMING_KEYS = frozenset({"elapsed", "steps_per_s", "images_per_s", "eta_s"})

TRAIN_KEYS = (
    "loss",
    "gamma_neg",
    "delta_p",
    "pos_mean",
    "neg_mean",
    "lr",
    "grad_norm",
    "skipped",
)


class NonFiniteError(RuntimeError):
    """Raised when ``max_consecutive_nonfinite`` steps in a row had a non-finite loss/gradient."""


class WorkdirConfigError(ValueError):
    """Raised when a workdir holds checkpoints of a run with a different config."""


@dataclasses.dataclass
class TrainResult:
    """What :func:`train_and_evaluate` returns.

    Attributes:
      state: the final (or interrupted) train state.
      summary: the content of ``summary.json``.
      records: the records of ``metrics.jsonl``.
      interrupted: the signal number that stopped the run early (``0`` for ``stop_at_step``),
        or None when the run completed.
      workdir: the workdir.
    """

    state: TrainState
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    interrupted: int | None
    workdir: str


@dataclasses.dataclass(frozen=True)
class Programs:
    """The model, optimizer and jitted functions of a run (cached: built once per process)."""

    model: Any
    tx: Any
    schedule: Any
    init: Callable[..., TrainState]
    train: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
    eval: Callable[..., dict[str, jax.Array]]


_PROGRAMS: dict[Any, Programs] = {}

# Config fields (top-level names or whole blocks) that do not change the compiled programs: run
# identity and seed (the seed reaches the programs as a traced key), the data block (it reaches
# them only through ``num_classes`` and ``image_size``, which are part of the key), the run length
# (through ``total_steps``), batch sizes (``jax.jit`` retraces on a new shape by itself) and
# host-side cadence / reporting. Every other field is part of the key, so that a new field is
# covered without editing this set.
NON_PROGRAM_FIELDS = frozenset(
    {
        "name",
        "seed",
        "data",
        "batch_size",
        "eval_batch_size",
        "num_epochs",
        "num_steps",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "max_checkpoints_to_keep",
        "async_checkpoints",
        "max_consecutive_nonfinite",
        "threshold",
        "progress_bar",
        "tensorboard",
        "profile_steps",
        # The initial weights reach the programs as an argument of the initialiser.
        "model.pretrained",
    }
)


def program_key(config: Any) -> str:
    """The part of ``config`` that determines the compiled programs, as a canonical string.

    The whole config minus :data:`NON_PROGRAM_FIELDS`; a dotted name (``"block.field"``) there
    excludes one field of a block.
    """
    tree = config.to_dict()
    for name in NON_PROGRAM_FIELDS:
        *parents, leaf = name.split(".")
        node = tree
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return json.dumps(tree, sort_keys=True, default=repr)


def total_steps_of(config: Any, epoch_steps: int) -> int:
    """``num_steps`` when set (> 0), else ``num_epochs * epoch_steps`` (steps in one epoch)."""
    if config.num_steps:
        return int(config.num_steps)
    return int(config.num_epochs) * epoch_steps


def build_programs(
    config: Any, *, num_classes: int, image_size: int, total_steps: int, mesh: jax.sharding.Mesh
) -> Programs:
    """Model, optimizer and the jitted init / train / eval steps for ``config`` on ``mesh``.

    Cached on everything that changes the compiled programs, so that several runs in one
    process (tests, comparisons, resume) compile once.
    """
    loss = LossConfig.from_config(config.loss)
    augment = AugmentConfig.from_config(config.augment)
    key = (program_key(config), int(num_classes), int(image_size), int(total_steps), mesh)
    if key in _PROGRAMS:
        return _PROGRAMS[key]
    model = create_model(
        config.model.name,
        num_classes=num_classes,
        dtype=config.model.dtype,
        width=config.model.width or None,
        normalization=config.model.normalization,
    )
    schedule = create_schedule(
        config.schedule,
        learning_rate=float(config.learning_rate),
        total_steps=total_steps,
        warmup_fraction=float(config.warmup_fraction),
    )
    tx = create_optimizer(
        config.optimizer,
        schedule=schedule,
        weight_decay=float(config.weight_decay),
        grad_clip_norm=float(config.grad_clip_norm) or None,
    )
    if config.model.freeze_backbone_steps:
        layout = MODELS[config.model.name].torch
        head = head_mask(layout.flax_head or layout.head)
        tx = optax.chain(tx, freeze_for(int(config.model.freeze_backbone_steps), head))
    init = parallel.jit_init(
        functools.partial(
            create_train_state,
            model=model,
            tx=tx,
            image_shape=(image_size, image_size, 3),
            gamma_neg=float(config.loss.gamma_neg),
        ),
        mesh,
    )
    train = parallel.jit_train_step(
        functools.partial(
            train_step,
            loss=loss,
            augment=augment,
            ema_decay=float(config.ema_decay),
            schedule=schedule,
        ),
        mesh,
    )
    eval_fn = parallel.jit_eval_step(eval_step, mesh)
    programs = Programs(model, tx, schedule, init, train, eval_fn)
    _PROGRAMS[key] = programs
    return programs


def _preemption_service() -> bool:
    """Whether JAX's coordination service watches for SIGTERM on this host (several hosts).

    ``jax.distributed.initialize`` starts a preemption sync manager (unless
    ``jax_enable_preemption_service`` is off) whose notifier catches SIGTERM, or the cloud's
    preemption notice, and tells every host.
    """
    if jax.process_count() == 1:
        return False
    from jax._src import distributed

    return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


class _StopFlag:
    """SIGINT/SIGTERM set a flag that the loop reads at step boundaries.

    A second SIGINT while the flag is already set raises KeyboardInterrupt (the user insists).
    Handlers are only installed from the main thread and are restored on exit. When JAX's
    preemption service runs (:func:`_preemption_service`), SIGTERM is left to it: a Python
    handler would replace its notifier, and the service is what tells the other hosts.
    """

    def __init__(self, install: bool):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self.preemption_service = _preemption_service()
        signums = [signal.SIGINT] + ([] if self.preemption_service else [signal.SIGTERM])
        if install and threading.current_thread() is threading.main_thread():
            for signum in signums:
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\nReceived {signal.Signals(signum).name}: stopping at the next step boundary "
            "and saving a checkpoint (press Ctrl-C again to abort without saving).",
            file=sys.stderr,
            flush=True,
        )

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _agree(flag: bool) -> bool:
    """True on every host when ``flag`` is True on any host."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())


def itstime(step: int, every: int, total: int) -> bool:
    """Whether a periodic action runs after ``step``: every ``every`` steps (0 = never) and last."""
    return step == total or (every > 0 and step % every == 0)


def _epoch_batches(run: _Run, *, step: int) -> Iterator[dict[str, np.ndarray]]:
    """The rest of the epoch of ``step``; the first one after a resume continues from the input
    pipeline's saved state when the source has one (Grain: the folder source streaming)."""
    config = run.config
    epoch, start = divmod(step, run.epoch_steps)
    batches = run.source.batches(
        BatchRequest.training(
            batch_size=int(config.batch_size),
            seed=int(config.seed),
            epoch=epoch,
            start_batch=start,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    )
    if run.data_state is not None and hasattr(batches, "set_state"):
        batches.set_state(run.data_state)
    run.data_state, run.batches = None, batches
    return batches


def _log(message: str) -> None:
    if jax.process_index() == 0:
        progress.log(message)  # through the progress bar while it is open


def train_and_evaluate(
    config: Any,
    workdir: str | os.PathLike[str],
    *,
    source: DataSource | None = None,
    mesh: jax.sharding.Mesh | None = None,
    stop_at_step: int | None = None,
    handle_signals: bool = True,
) -> TrainResult:
    """Trains and evaluates a model as configured, in ``workdir`` (resuming if possible).

    Args:
      config: the training config (``train/configs/default.py``); validated first.
      workdir: where ``config.json``, ``metrics.jsonl``, ``summary.json``, ``checkpoints/`` and
        ``plots/`` go. A workdir with checkpoints is resumed.
      source: the dataset; default ``create_source(config.data, seed=config.seed)``.
      mesh: the device mesh; default all devices (:func:`parallel.make_mesh`).
      stop_at_step: behave as if interrupted after this step (checkpoint and return): the
        deterministic twin of SIGTERM, for tests and for slicing a run into jobs.
      handle_signals: install the SIGINT/SIGTERM handlers (main thread only).

    Returns:
      A :class:`TrainResult`.

    Raises:
      ConfigError: invalid config (naming the field) or unusable data.
      WorkdirConfigError: the workdir's checkpoints come from a config that changes results.
      UnreadableCheckpointError: the workdir has checkpoints, but none can be read.
      NonFiniteError: too many consecutive non-finite steps.
    """
    run = _setup(config, workdir, source=source, mesh=mesh)
    stop = _StopFlag(handle_signals)
    try:
        interrupted = _train(run, stop=stop, stop_at_step=stop_at_step)
    finally:
        stop.restore()
        run.close()
    return _finish(run, interrupted)


@dataclasses.dataclass
class _Run:
    """A training job in progress: what setup built, and what the loop advances."""

    config: Any
    workdir: str
    source: DataSource
    mesh: jax.sharding.Mesh
    programs: Programs
    ckpt: Checkpointer
    log: MetricsLog
    state: TrainState
    epoch_steps: int
    total_steps: int
    elapsed_before: float  # wall time of the earlier sessions of a resumed run
    last_saved: int | None
    progress: progress.ProgressBar | None = None
    start_time: float = dataclasses.field(default_factory=time.time)
    data_state: dict[str, Any] | None = None  # saved with the restored checkpoint
    batches: Iterator[dict[str, np.ndarray]] | None = None  # the epoch being trained

    @property
    def step(self) -> int:
        return int(jax.device_get(self.state.step))

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.start_time

    def save(self) -> None:
        """Checkpoints the state, with the evaluation of this step if there is one (the
        checkpointer keeps the best evaluations' checkpoints by it)."""
        step = self.step
        scores = next(
            (r for r in reversed(self.log.records) if r["kind"] == "eval" and r["step"] == step),
            {},
        )
        get_state = getattr(self.batches, "get_state", None)
        self.ckpt.save(
            self.state,
            metrics={k: scores.get(k) for k in BEST_METRICS},
            data_state=get_state() if get_state is not None else None,
        )
        self.last_saved = step

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.log.close()
        self.ckpt.close()
        if hasattr(self.source, "close"):
            self.source.close()  # the input pipeline's worker processes


def _setup(
    config: Any, workdir: str | os.PathLike[str], *, source: DataSource | None, mesh: Any
) -> _Run:
    """Checks the config, builds data and programs, and restores the latest checkpoint."""
    workdir = os.path.abspath(os.fspath(workdir))
    mesh = parallel.make_mesh() if mesh is None else mesh
    validate_config(config, num_devices=mesh.size, process_count=jax.process_count())
    check_dataset_memory(config)  # before a shapes dataset of an absurd size is generated
    if source is None:
        try:
            source = create_source(config.data, seed=int(config.seed))
        except ValueError as e:  # bad folder rows, TFDS dataset not prepared...
            raise ConfigError(f"data.name={config.data.name!r}: {e}") from e
    config = _fit_batch_size(config, source, mesh)
    check_batch_memory(config, num_devices=mesh.size, local_devices=len(mesh.local_devices))
    config = _resolve_class_weights(config, source)
    config = _resolve_normalization(config)
    try:
        epoch_steps = steps_per_epoch(source, int(config.batch_size))
    except ValueError as e:
        raise ConfigError(f"batch_size={config.batch_size}: {e}") from e
    total_steps = total_steps_of(config, epoch_steps)
    programs = build_programs(
        config,
        num_classes=source.num_classes,
        image_size=source.image_size,
        total_steps=total_steps,
        mesh=mesh,
    )
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=int(config.max_checkpoints_to_keep),
        async_save=bool(config.async_checkpoints),
    )
    _refuse_other_config(config, workdir, ckpt, ckpt.latest_step())
    state, restored_step = _restore(ckpt, _initial_state(config, programs, ckpt, source))
    is_main = jax.process_index() == 0
    if is_main:
        _write_run_files(config, workdir, source)
    log = MetricsLog(
        os.path.join(workdir, "metrics.jsonl"),
        keep_until_step=restored_step,
        enabled=is_main,
        tensorboard=bool(config.tensorboard),
        tensorboard_text=config.to_json_best_effort(indent=2, sort_keys=True),
    )
    elapsed_before = next(
        (r["elapsed"] for r in reversed(log.records) if r.get("elapsed") is not None), 0.0
    )
    run = _Run(
        config,
        workdir,
        source,
        mesh,
        programs,
        ckpt,
        log,
        state,
        epoch_steps,
        total_steps,
        elapsed_before,
        last_saved=restored_step,
        data_state=None if restored_step is None else ckpt.data_state(restored_step),
    )
    if is_main and config.progress_bar:
        run.progress = progress.ProgressBar(total_steps, run.step, int(config.batch_size))
    return run


def _fit_batch_size(config: Any, source: DataSource, mesh: jax.sharding.Mesh) -> Any:
    """``config``, or a copy whose ``batch_size`` fits a smaller train split (with a warning).

    The copy is what the run uses and writes to ``config.json``; a rerun with the same command
    makes the same choice, so resuming is not refused. The caller's config is left as given.
    """
    num_train = source.num_examples("train")
    multiple = math.lcm(mesh.size, jax.process_count())
    fitted = fit_batch_size(int(config.batch_size), num_train, multiple=multiple)
    if fitted == config.batch_size:
        return config
    _log(
        f"warning: batch_size={config.batch_size} is larger than the train split of "
        f"{source.name!r} ({num_train} examples); training with batch_size={fitted} "
        f"(the largest multiple of the {multiple} device(s) that fits; recorded in config.json)."
    )
    config = copy.deepcopy(config)
    config.batch_size = fitted
    return config


def _resolve_class_weights(config: Any, source: DataSource) -> Any:
    """``config``, or a copy whose ``loss.class_weights='inverse_frequency'`` holds the weights
    derived from the train labels (recorded in ``config.json``); checks their number."""
    text = str(config.loss.class_weights)
    if text == INVERSE_FREQUENCY:
        labels = _split_labels(source, "train")
        if labels is None:
            raise ConfigError(
                f"loss.class_weights='inverse_frequency' needs the train labels, which "
                f"data.name={config.data.name!r} does not expose: give one weight per class"
            )
        resolved = resolve_class_weights(text, labels)
        _log(f"loss.class_weights='inverse_frequency': {resolved} (recorded in config.json).")
        config = copy.deepcopy(config)
        config.loss.class_weights = resolved
    count = len(parse_class_weights(str(config.loss.class_weights)))
    if count and count != source.num_classes:
        raise ConfigError(
            f"loss.class_weights has {count} weights; data.name={config.data.name!r} has "
            f"{source.num_classes} classes (one weight per class, in the order of classes.txt)"
        )
    return config


def _resolve_normalization(config: Any) -> Any:
    """``config``, or a copy whose ``model.normalization='auto'`` names the normalisation the
    initial weights expect (recorded in ``config.json``, where predict and evaluate read it)."""
    from asl_jax.models.pretrained import resolve_normalization

    if config.model.normalization != "auto":
        return config
    try:
        resolved = resolve_normalization(config.model.name, str(config.model.pretrained))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    config = copy.deepcopy(config)
    config.model.normalization = resolved
    return config


def _initial_state(
    config: Any, programs: Programs, ckpt: Checkpointer, source: DataSource
) -> TrainState:
    """The state a new run starts from: the model's initialisation, or ``model.pretrained``'s
    weights (only read when there is no checkpoint to resume; a re-initialised head gets the
    key the model's own initialisation would use)."""
    key = jax.random.key(int(config.seed))
    if not config.model.pretrained or ckpt.latest_step() is not None:
        return programs.init(key)
    from asl_jax.models.pretrained import load_pretrained

    try:
        variables, note = load_pretrained(
            config.model.name,
            str(config.model.pretrained),
            num_classes=source.num_classes,
            rng=jax.random.split(key)[0],
            image_size=source.image_size,
        )
    except (OSError, ValueError, ImportError) as e:  # missing file, mismatch, no torch
        ckpt.close()
        raise ConfigError(str(e)) from None
    _log(f"{note}; input normalisation {config.model.normalization!r}.")
    return programs.init(key, variables=variables)


def added_field_defaults(old: dict[str, Any]) -> dict[str, Any]:
    """What the fields added since the run of config ``old`` started meant for that run: loss
    and augmentation fields their defaults; a run from before pretrained weights started from
    scratch, normalising as its model does."""
    name = old.get("model", {}).get("name", "cnn")
    return {
        "loss": dataclasses.asdict(LossConfig()),
        "augment": dataclasses.asdict(AugmentConfig()),
        "model": {
            "pretrained": "",
            "normalization": default_normalization(name) if name in MODELS else "auto",
            "freeze_backbone_steps": 0,
        },
    }


def _refuse_other_config(
    config: Any, workdir: str, ckpt: Checkpointer, restored_step: int | None
) -> None:
    config_path = os.path.join(workdir, "config.json")
    if restored_step is None or not os.path.exists(config_path):
        return
    # Fields added since the run started count as what they meant for it.
    old = read_json(config_path)
    diff = changed_result_fields(old, config.to_dict(), defaults=added_field_defaults(old))
    if diff:
        ckpt.close()
        raise WorkdirConfigError(
            f"{workdir} holds checkpoints of a run with a different config "
            f"({'; '.join(diff)}). Resuming would mix two runs: use another --workdir, "
            "rerun with the original config, or delete the workdir to start over."
        )


def _restore(ckpt: Checkpointer, state: TrainState) -> tuple[TrainState, int | None]:
    """The newest readable checkpoint and its step (``state`` and None when there is none).

    An unreadable newer checkpoint is moved aside with a one-line warning, and the run resumes
    from the one before: a damaged checkpoint costs one checkpoint interval. When none can be
    read the run stops rather than start over in a workdir that holds results.
    """
    if ckpt.latest_step() is None:
        return state, None
    try:
        state, step, set_aside = ckpt.restore_newest_readable(state)
    except UnreadableCheckpointError as e:
        ckpt.close()
        raise UnreadableCheckpointError(
            f"{e}. Nothing was moved or deleted; to start over, use a new --workdir or move "
            f"{ckpt.directory} away."
        ) from None
    for item in set_aside:
        _log(
            f"warning: the checkpoint of step {item.step} cannot be read ({item.reason}); "
            f"moved it to {item.moved_to} and resuming from an older one."
        )
    _log(f"Resuming from step {step} ({ckpt.path(step)}).")
    return state, step


def _write_run_files(config: Any, workdir: str, source: DataSource) -> None:
    write_json(os.path.join(workdir, "config.json"), config.to_dict())
    # The class order of the model's outputs, for train.predict and train.evaluate (one name a
    # line, like the folder dataset's classes.txt).
    classes_path = os.path.join(workdir, "classes.txt")
    with open(f"{classes_path}.tmp", "w", encoding="utf-8") as f:
        f.writelines(f"{name}\n" for name in source.class_names)
    os.replace(f"{classes_path}.tmp", classes_path)


class _TrainRecords:
    """Train-step metrics kept on device until a log boundary, then written in one fetch.

    Fetching only at log boundaries keeps the host from waiting on every step.
    """

    def __init__(self, run: _Run):
        self.run = run
        self.pending: list[tuple[int, dict[str, jax.Array]]] = []
        self.num_skipped = int(jax.device_get(run.state.num_skipped))
        # Speed of this session, from the first fetch on (compilation is not counted).
        self.rate = progress.StepRate(int(run.config.batch_size))

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self.pending.append((step, metrics))

    def flush(self, nonfinite_limit: int) -> int | None:
        """Writes the pending train records up to the first step that ends a run of
        ``nonfinite_limit`` non-finite steps, and returns that step (None when there is none)."""
        run = self.run
        fetched = jax.device_get([m for _, m in self.pending])
        if self.pending:
            self.rate.mark(self.pending[-1][0])  # the fetch waited for that step
            if run.progress is not None:
                run.progress.synced(self.pending[-1][0])
        for (step, _), m in zip(self.pending, fetched, strict=True):
            self.num_skipped += int(m["skipped"])
            if itstime(step, int(run.config.log_every), run.total_steps):
                self._write(step, m)
            if int(m["consecutive_nonfinite"]) >= nonfinite_limit:
                self.pending.clear()
                return step
        self.pending.clear()
        return None

    def _write(self, step: int, metrics: dict[str, Any]) -> None:
        run = self.run
        record = {"kind": "train", "step": step, "epoch": step / run.epoch_steps}
        record["elapsed"] = run.elapsed()
        record.update({k: float(metrics[k]) for k in TRAIN_KEYS})
        record["skipped"] = int(metrics["skipped"])
        record["num_skipped"] = self.num_skipped
        steps_per_s = self.rate.steps_per_second()  # None until two fetches of this session
        record["steps_per_s"] = steps_per_s
        record["images_per_s"] = None if steps_per_s is None else steps_per_s * self.rate.batch_size
        record["eta_s"] = None if steps_per_s is None else (run.total_steps - step) / steps_per_s
        run.log.write(record)
        if run.progress is not None:
            run.progress.set_metrics(
                loss=f"{record['loss']:.4g}", gamma_neg=f"{record['gamma_neg']:.3g}"
            )


def _check_finite(run: _Run, records: _TrainRecords) -> None:
    """The non-finite policy: the step skips a bad update; here the run stops after too many."""
    limit = int(run.config.max_consecutive_nonfinite)
    stopped_at = records.flush(limit)
    if stopped_at is None:
        return
    where = (
        f"the last good checkpoint is {run.ckpt.path(run.last_saved)} (step {run.last_saved})"
        if run.last_saved is not None
        else "no checkpoint was saved yet"
    )
    raise NonFiniteError(
        f"training stopped at step {stopped_at}: {limit} consecutive steps had a non-finite loss "
        "or gradient (the parameters were left unchanged by each); "
        f"{where}. Lower learning_rate, set grad_clip_norm, or check the data."
    )


def _sets_a_best(records: list[dict[str, Any]], scores: dict[str, Any]) -> bool:
    """Whether ``scores`` equal or beat the earlier evaluations of ``records`` in a metric of
    :data:`BEST_METRICS` (a tie counts: the best checkpoint is the latest of equals)."""
    for key in BEST_METRICS:
        value = scores.get(key)
        if value is None or not np.isfinite(value):
            continue
        earlier = [r[key] for r in records if r["kind"] == "eval" and r.get(key) is not None]
        if not earlier or value >= max(earlier):
            return True
    return False


def _evaluate_and_log(run: _Run) -> bool:
    """Evaluates and writes the eval record; returns whether it sets a best (see
    :func:`_sets_a_best`)."""
    step = run.step
    scores = evaluate(
        run.programs.eval,
        run.state,
        run.source,
        batch_size=eval_batch_size(run.config),
        mesh=run.mesh,
        threshold=float(run.config.threshold),
    )
    # Every host computes the same scores from the same replicated outputs; agreeing anyway
    # guarantees that all take part in the checkpoint that follows.
    new_best = _agree(_sets_a_best(run.log.records, scores))
    run.log.write({"kind": "eval", "step": step, "elapsed": run.elapsed(), **scores})
    if run.progress is not None:
        run.progress.write(
            f"step {step}: mAP {100 * scores['map']:.2f}% (EMA {100 * scores['map_ema']:.2f}%)"
        )
    return new_best


def _interruption(stop: _StopFlag, step: int, by_request: bool, *, fetch: bool) -> int | None:
    """The signal that stops the run after ``step`` (0 = ``stop_at_step``), or None.

    Every host must stop after the same step, so that they write one checkpoint together (and
    none waits forever in a collective). One host checks every step. Several hosts use:

    - SIGTERM, when JAX's preemption service runs (``jax.distributed``'s default): the service
      passes a SIGTERM of any host to all, and ``reached_preemption_sync_point`` names the same
      step on each (one past the furthest host). It is a local call, made every step.
    - Otherwise (SIGINT, SIGTERM without the service, ``stop_at_step``): an all-gather of the
      flags at each metric fetch (``fetch``: every ``log_every`` steps, or every
      ``max_consecutive_nonfinite`` when sooner). The fetch has already waited for the step, so
      the collective of one integer per host adds about a millisecond where the host would
      otherwise idle; every step it would stall the dispatch of the next step each time.
    """
    if stop.preemption_service:
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
            return _announce_stop(step, int(signal.SIGTERM), "a preemption notice (SIGTERM)")
    if jax.process_count() > 1 and not fetch:
        return None
    if not _agree(stop.signum is not None or by_request):
        return None
    if stop.signum is not None:
        return _announce_stop(step, stop.signum, signal.Signals(stop.signum).name)
    if by_request:
        return 0
    # SIGTERM when only another host was signalled.
    return _announce_stop(step, int(signal.SIGTERM), "a signal to another process")


def _announce_stop(step: int, signum: int, cause: str) -> int:
    """Says on each host of a multi-host run why and where it stops; returns ``signum``."""
    if jax.process_count() > 1:
        print(
            f"process {jax.process_index()}/{jax.process_count()}: {cause}; stopping after step "
            f"{step} and saving a checkpoint.",
            file=sys.stderr,
            flush=True,
        )
    return signum


class _Profiler:
    """A ``jax.profiler`` trace of ``profile_steps`` steps into ``WORKDIR/profile`` (process 0).

    It starts after the session's first step, which compiles the program, so the trace shows
    steady-state steps; open it with TensorBoard's Profile tab or Perfetto (``*.trace.json.gz``).
    """

    def __init__(self, run: _Run, first_step: int):
        steps = int(run.config.profile_steps) if jax.process_index() == 0 else 0
        self.directory = os.path.join(run.workdir, "profile")
        self.start = first_step + 1 if steps > 0 else None
        self.stop = first_step + 1 + steps
        self.active = False

    def after_step(self, step: int, state: TrainState) -> None:
        if self.start is None:
            return
        if step == self.start:
            jax.block_until_ready(state)  # the trace holds the next steps only
            jax.profiler.start_trace(self.directory)
            self.active = True
        elif self.active and step >= self.stop:
            self.finish(state)

    def finish(self, state: TrainState) -> None:
        if self.active:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False
            _log(f"Profile of steps {self.start + 1}-{self.stop} in {self.directory}.")


def _train(run: _Run, *, stop: _StopFlag, stop_at_step: int | None) -> int | None:
    """Steps until the end or an interruption; returns the interrupting signal (or None)."""
    config, total = run.config, run.total_steps
    eval_every = eval_interval(int(config.eval_every), total)
    records = _TrainRecords(run)
    step = run.step
    profiler = _Profiler(run, step)
    interrupted: int | None = None
    _log(
        f"Training {config.model.name} on {run.source.name} ({run.source.num_classes} classes) "
        f"with {config.loss.name}: steps {step} -> {total} ({run.epoch_steps} per epoch), "
        f"global batch {config.batch_size} on {run.mesh.size} device(s), "
        f"{jax.process_count()} process(es); workdir {run.workdir}"
    )
    while step < total and interrupted is None:
        for batch in _epoch_batches(run, step=step):
            run.state, metrics = run.programs.train(
                run.state, parallel.shard_batch(batch, run.mesh)
            )
            step += 1
            records.add(step, metrics)
            profiler.after_step(step, run.state)
            if run.progress is not None:
                run.progress.update(1)
            at_log = itstime(step, int(config.log_every), total)
            # Fetch at least every max_consecutive_nonfinite steps, so that a run of bad steps
            # is noticed when it reaches the limit.
            fetch = at_log or len(records.pending) >= int(config.max_consecutive_nonfinite)
            if fetch:
                _check_finite(run, records)
            requested = stop_at_step is not None and step >= stop_at_step
            interrupted = _interruption(stop, step, requested, fetch=fetch)
            new_best = False
            if itstime(step, eval_every, total):
                _check_finite(run, records)
                new_best = _evaluate_and_log(run)
            # A new best evaluation gets a checkpoint even between checkpoint steps, so that
            # the best checkpoints (kept beside the latest) exist.
            if new_best or itstime(step, int(config.checkpoint_every), total):
                run.save()
            if interrupted is not None or step >= total:
                break
    profiler.finish(run.state)
    _check_finite(run, records)
    if interrupted is not None and run.last_saved != step:
        run.save()
    run.ckpt.wait()
    return interrupted


def _finish(run: _Run, interrupted: int | None) -> TrainResult:
    """Writes ``summary.json`` and the plots; returns the result."""
    config, step = run.config, run.step
    summary = summarize(
        run.log.records,
        extra={
            "config_name": config.name,
            "status": "completed" if interrupted is None else "interrupted",
            "step": step,
            "total_steps": run.total_steps,
            "epochs": step / run.epoch_steps,
            "wall_time_s": run.elapsed(),
            "workdir": run.workdir,
            "checkpoint": run.ckpt.path(run.last_saved) if run.last_saved is not None else None,
            "num_devices": run.mesh.size,
            "num_processes": jax.process_count(),
            "unknown_labels": _unknown_labels(run.source),
        },
    )
    if jax.process_index() == 0:
        write_json(os.path.join(run.workdir, "summary.json"), summary)
        try:
            from asl_jax.training.plots import plot_run

            target = float(config.loss.delta_p_target) if config.loss.adaptive else None
            plot_run(run.log.records, os.path.join(run.workdir, "plots"), delta_p_target=target)
        except Exception as e:  # plots are a convenience: never lose a run to them
            _log(f"warning: could not write plots: {e!r}")
    return TrainResult(run.state, summary, list(run.log.records), interrupted, run.workdir)


def _unknown_labels(source: DataSource) -> dict[str, int] | None:
    """Per split, how many label entries are unknown (-1: left out of the loss, Δp and the
    metrics); None when the source does not expose its labels."""
    counts = {}
    for split in ("train", "val"):
        labels = _split_labels(source, split)
        if labels is None:
            return None
        counts[split] = int(np.count_nonzero(~known_labels_mask(labels)))
    return counts


def _split_labels(source: DataSource, split: str) -> np.ndarray | None:
    """The ``[N, K]`` labels of a split, when the source holds them (shapes, folder)."""
    if hasattr(source, "labels"):
        return np.asarray(source.labels(split))
    if hasattr(source, "arrays"):
        return np.asarray(source.arrays(split)[1])
    return None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def format_summary(summary: dict[str, Any]) -> str:
    """The lines printed at the end of ``python -m train``."""
    final = summary.get("final") or {}
    workdir = summary["workdir"]
    lines = []
    if summary["status"] == "interrupted":
        lines.append(
            f"Interrupted at step {summary['step']}/{summary['total_steps']}; checkpoint saved "
            f"to {summary['checkpoint']}. Rerun the same command to resume."
        )
    if final:
        lines.append(
            f"Final mAP {_pct(final.get('map'))} (EMA {_pct(final.get('map_ema'))}) at step "
            f"{final['step']}; CF1 {_pct(final.get('cf1'))}, OF1 {_pct(final.get('of1'))}; "
            f"best mAP {_pct(summary.get('best_map'))} at step {summary.get('best_map_step')}."
        )
    if summary.get("final_gamma_neg") is not None:
        delta_p = summary.get("final_delta_p")
        lines.append(
            f"Final γ− = {summary['final_gamma_neg']:.3f}, Δp = "
            f"{'n/a' if delta_p is None else f'{delta_p:.3f}'}; "
            f"{summary['num_skipped']} non-finite step(s) skipped; "
            f"wall time {summary['wall_time_s']:.0f} s."
        )
    lines.append(
        f"Results in {workdir}: metrics.jsonl, summary.json, plots/, checkpoints/, config.json."
    )
    return "\n".join(lines)
