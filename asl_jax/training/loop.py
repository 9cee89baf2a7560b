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

Non-finite steps. A step whose loss or gradient is not finite leaves the state unchanged (only the
step and skip counters advance); ``max_consecutive_nonfinite`` such steps in a row stop the run
with :class:`NonFiniteError`, naming the step and the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from asl_jax.data import DataSource, create_source, steps_per_epoch
from asl_jax.metrics import mean_average_precision, threshold_metrics
from asl_jax.models import create_model
from asl_jax.training import parallel
from asl_jax.training.checkpoint import Checkpointer
from asl_jax.training.config import ConfigError, changed_result_fields, validate_config
from asl_jax.training.optim import create_optimizer, create_schedule
from asl_jax.training.records import MetricsLog, read_json, summarize, write_json
from asl_jax.training.state import TrainState, create_train_state
from asl_jax.training.step import AugmentConfig, LossConfig, eval_step, train_step

#: Keys of a train record in metrics.jsonl (besides "kind", "step", "epoch", "elapsed").
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
        "max_consecutive_nonfinite",
        "threshold",
        "progress_bar",
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


def total_steps_of(config: Any, steps_per_epoch_: int) -> int:
    """``num_steps`` when set (> 0), else ``num_epochs * steps_per_epoch``."""
    if config.num_steps:
        return int(config.num_steps)
    return int(config.num_epochs) * steps_per_epoch_


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
    evaluate = parallel.jit_eval_step(eval_step, mesh)
    programs = Programs(model, tx, schedule, init, train, evaluate)
    _PROGRAMS[key] = programs
    return programs


def _to_host(x: jax.Array) -> np.ndarray:
    # Outputs are replicated: every host reads its local copy (valid on several hosts too).
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def evaluate(
    programs: Programs,
    state: TrainState,
    source: DataSource,
    *,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    threshold: float = 0.5,
) -> dict[str, float]:
    """mAP and threshold metrics of the regular and the EMA model on the ``val`` split.

    Returns:
      ``map``, ``cf1``, ``of1``, ``cp``, ``cr``, ``op``, ``or`` and the same with ``_ema``, as
      fractions in [0, 1].
    """
    outputs: dict[str, list[np.ndarray]] = {"probs": [], "probs_ema": [], "labels": []}
    for batch in source.batches(
        "val",
        batch_size=batch_size,
        seed=0,
        shuffle=False,
        drop_remainder=False,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        out = programs.eval(state, parallel.shard_batch(batch, mesh))
        keep = _to_host(out["mask"])
        for name in outputs:
            outputs[name].append(_to_host(out[name])[keep])
    labels = np.concatenate(outputs["labels"])
    # Unknown labels (< 0) are left out: of each class's AP, and of the threshold counts (a
    # probability of 0 with a label of 0 is neither a true nor a false positive nor a miss).
    known = labels >= 0
    result: dict[str, float] = {}
    for name, suffix in (("probs", ""), ("probs_ema", "_ema")):
        probs = np.concatenate(outputs[name])
        if known.all():
            m_ap = mean_average_precision(probs, labels)
        else:
            aps = []
            for k in range(labels.shape[1]):
                rows = known[:, k]
                aps.append(mean_average_precision(probs[rows, k : k + 1], labels[rows, k : k + 1]))
            m_ap = float(np.nanmean(aps)) if not np.all(np.isnan(aps)) else float("nan")
        result[f"map{suffix}"] = float(m_ap)
        thr = threshold_metrics(
            np.where(known, probs, 0.0), np.where(known, labels, 0.0), threshold=threshold
        )
        for key, value in thr.items():
            result[f"{key.lower()}{suffix}"] = float(value)
    return result


class _StopFlag:
    """SIGINT/SIGTERM set a flag that the loop reads at step boundaries.

    A second SIGINT while the flag is already set raises KeyboardInterrupt (the user insists).
    Handlers are only installed from the main thread and are restored on exit.
    """

    def __init__(self, install: bool):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        if install and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
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


def _epoch_batches(
    source: DataSource, config: Any, *, step: int, spe: int
) -> Iterator[dict[str, np.ndarray]]:
    epoch, start = divmod(step, spe)
    return source.batches(
        "train",
        batch_size=int(config.batch_size),
        seed=int(config.seed),
        epoch=epoch,
        start_batch=start,
        shuffle=True,
        drop_remainder=True,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


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
      NonFiniteError: too many consecutive non-finite steps.
    """
    workdir = os.path.abspath(os.fspath(workdir))
    mesh = parallel.make_mesh() if mesh is None else mesh
    is_main = jax.process_index() == 0
    validate_config(config, num_devices=mesh.size, process_count=jax.process_count())
    if source is None:
        try:
            source = create_source(config.data, seed=int(config.seed))
        except ValueError as e:  # bad folder rows, TFDS dataset not prepared...
            raise ConfigError(f"data.name={config.data.name!r}: {e}") from e
    try:
        spe = steps_per_epoch(source, int(config.batch_size))
    except ValueError as e:
        raise ConfigError(f"batch_size={config.batch_size}: {e}") from e
    total_steps = total_steps_of(config, spe)
    eval_batch_size = int(config.eval_batch_size) or int(config.batch_size)
    programs = build_programs(
        config,
        num_classes=source.num_classes,
        image_size=source.image_size,
        total_steps=total_steps,
        mesh=mesh,
    )

    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.join(workdir, "config.json")
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=int(config.max_checkpoints_to_keep)
    )
    restored_step = ckpt.latest_step()
    if restored_step is not None and os.path.exists(config_path):
        diff = changed_result_fields(read_json(config_path), config.to_dict())
        if diff:
            ckpt.close()
            raise WorkdirConfigError(
                f"{workdir} holds checkpoints of a run with a different config "
                f"({'; '.join(diff)}). Resuming would mix two runs: use another --workdir, "
                "rerun with the original config, or delete the workdir to start over."
            )
    state = programs.init(jax.random.key(int(config.seed)))
    if restored_step is not None:
        state = ckpt.restore(state, restored_step)
        _log(f"Resuming from step {restored_step} ({ckpt.path(restored_step)}).")
    if is_main:
        write_json(config_path, config.to_dict())
        # The class order of the model's outputs, for train.predict and train.evaluate (one name
        # a line, like the folder dataset's classes.txt).
        classes_path = os.path.join(workdir, "classes.txt")
        with open(f"{classes_path}.tmp", "w", encoding="utf-8") as f:
            f.writelines(f"{name}\n" for name in source.class_names)
        os.replace(f"{classes_path}.tmp", classes_path)
    log = MetricsLog(
        os.path.join(workdir, "metrics.jsonl"), keep_until_step=restored_step, enabled=is_main
    )
    elapsed0 = next(
        (r["elapsed"] for r in reversed(log.records) if r.get("elapsed") is not None), 0.0
    )

    step = int(jax.device_get(state.step))
    max_nonfinite = int(config.max_consecutive_nonfinite)
    log_every = int(config.log_every)
    eval_every = int(config.eval_every)
    checkpoint_every = int(config.checkpoint_every)
    interrupted: int | None = None
    start_time = time.time()
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    last_saved = restored_step
    num_skipped = int(jax.device_get(state.num_skipped))

    progress = None
    if is_main and config.progress_bar:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=step, desc="train", unit="step", leave=False)

    def elapsed() -> float:
        return elapsed0 + time.time() - start_time

    def flush() -> None:
        nonlocal num_skipped
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, fetched, strict=True):
            num_skipped += int(m["skipped"])
            if s % log_every == 0 or s == total_steps:
                record = {"kind": "train", "step": s, "epoch": s / spe, "elapsed": elapsed()}
                record.update({k: float(m[k]) for k in TRAIN_KEYS})
                record["skipped"] = int(m["skipped"])
                record["num_skipped"] = num_skipped
                log.write(record)
                if progress is not None:
                    progress.set_postfix(
                        loss=f"{record['loss']:.4g}", gamma_neg=f"{record['gamma_neg']:.3g}"
                    )
            if int(m["consecutive_nonfinite"]) >= max_nonfinite:
                where = (
                    f"the last good checkpoint is {ckpt.path(last_saved)} (step {last_saved})"
                    if last_saved is not None
                    else "no checkpoint was saved yet"
                )
                raise NonFiniteError(
                    f"training stopped at step {s}: {max_nonfinite} consecutive steps had a "
                    f"non-finite loss or gradient (the parameters were left unchanged by each); "
                    f"{where}. Lower learning_rate, set grad_clip_norm, or check the data."
                )
        pending.clear()

    def save() -> None:
        nonlocal last_saved
        ckpt.save(state)
        last_saved = step

    stop = _StopFlag(handle_signals)
    try:
        _log(
            f"Training {config.model.name} on {source.name} ({source.num_classes} classes) "
            f"with {config.loss.name}: steps {step} -> {total_steps} ({spe} per epoch), "
            f"global batch {config.batch_size} on {mesh.size} device(s), "
            f"{jax.process_count()} process(es); workdir {workdir}"
        )
        while step < total_steps and interrupted is None:
            for batch in _epoch_batches(source, config, step=step, spe=spe):
                state, metrics = programs.train(state, parallel.shard_batch(batch, mesh))
                step += 1
                pending.append((step, metrics))
                if progress is not None:
                    progress.update(1)
                at_log = step % log_every == 0 or step == total_steps
                if at_log or len(pending) >= max_nonfinite:
                    flush()
                # Several hosts must stop at the same step: they agree at log boundaries.
                by_request = stop_at_step is not None and step >= stop_at_step
                if (jax.process_count() == 1 or at_log) and _agree(
                    stop.signum is not None or by_request
                ):
                    # 0 = stop_at_step; SIGTERM when only another host was signalled.
                    interrupted = (
                        stop.signum
                        if stop.signum is not None
                        else (0 if by_request else int(signal.SIGTERM))
                    )
                if (eval_every and step % eval_every == 0) or step == total_steps:
                    flush()
                    metrics_ = evaluate(
                        programs,
                        state,
                        source,
                        batch_size=eval_batch_size,
                        mesh=mesh,
                        threshold=float(config.threshold),
                    )
                    log.write({"kind": "eval", "step": step, "elapsed": elapsed(), **metrics_})
                    if progress is not None:
                        progress.write(
                            f"step {step}: mAP {100 * metrics_['map']:.2f}% "
                            f"(EMA {100 * metrics_['map_ema']:.2f}%)"
                        )
                if (checkpoint_every and step % checkpoint_every == 0) or step == total_steps:
                    save()
                if interrupted is not None or step >= total_steps:
                    break
        flush()
        if interrupted is not None and last_saved != step:
            save()
        ckpt.wait()
    finally:
        stop.restore()
        if progress is not None:
            progress.close()
        ckpt.close()

    status = "completed" if interrupted is None else "interrupted"
    summary = summarize(
        log.records,
        extra={
            "config_name": config.name,
            "status": status,
            "step": step,
            "total_steps": total_steps,
            "epochs": step / spe,
            "wall_time_s": elapsed(),
            "workdir": workdir,
            "checkpoint": ckpt.path(last_saved) if last_saved is not None else None,
            "num_devices": mesh.size,
            "num_processes": jax.process_count(),
        },
    )
    if is_main:
        write_json(os.path.join(workdir, "summary.json"), summary)
        try:
            from asl_jax.training.plots import plot_run

            target = float(config.loss.delta_p_target) if config.loss.adaptive else None
            plot_run(log.records, os.path.join(workdir, "plots"), delta_p_target=target)
        except Exception as e:  # plots are a convenience: never lose a run to them
            _log(f"warning: could not write plots: {e!r}")
    return TrainResult(state, summary, list(log.records), interrupted, workdir)


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
