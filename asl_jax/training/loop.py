"""The training loop: steps, evaluation, logging, checkpoints, and the end of a run.

:func:`train_and_evaluate` runs a whole training job in a workdir. It is what ``python -m train``
calls, and it can be called from Python (tests, notebooks, ``train.compare``). Setting a run up
(config, data, programs, restoring a checkpoint) is :mod:`asl_jax.training.setup`; stopping it
on a signal or a preemption is :mod:`asl_jax.training.interrupt`.

Resuming. The loop checkpoints every ``checkpoint_every`` steps, at the end, and when it is
interrupted (SIGINT / SIGTERM: the handler only sets a flag; the loop stops at the next step
boundary, saves and returns). Rerunning the same command restores the latest checkpoint and
continues with the same data order (the batches of an epoch are a pure function of ``(seed,
epoch)``; the loop asks the source for ``epoch = step // steps_per_epoch`` starting at
``step % steps_per_epoch``) and the same randomness (step ``t`` uses ``fold_in(rng, t)``), so it
ends with the same state as an uninterrupted run.

Checkpoints kept. The ``max_checkpoints_to_keep`` latest, plus those of the best validation mAP
and of the best EMA validation mAP (a tie goes to the later step): an evaluation that sets a best
is checkpointed even between checkpoint steps.

Non-finite steps. A step whose loss or gradient is not finite leaves the state unchanged (only the
step and skip counters advance); ``max_consecutive_nonfinite`` such steps in a row stop the run
with :class:`NonFiniteError`, naming the step and the last good checkpoint. An evaluation whose
probabilities are not finite (diverged parameters, which the skipped steps would keep) is written
as a record and stops the run the same way. The last good checkpoint is the newest one whose
models give finite probabilities (by its evaluation, or evaluated then); the message says when
there is none.

Failed saves. A checkpoint that cannot be written ends the run with
:class:`~asl_jax.training.checkpoint.CheckpointSaveError` (the step, the cause, the last
checkpoint on disk).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from asl_jax.data import BatchRequest, DataSource, split_labels
from asl_jax.losses import known_labels_mask
from asl_jax.training import parallel, progress
from asl_jax.training.checkpoint import BEST_METRICS
from asl_jax.training.config import Config, eval_interval
from asl_jax.training.evaluation import evaluate, is_finite
from asl_jax.training.interrupt import StopFlag, agree, interruption
from asl_jax.training.records import _plain, summarize, write_json
from asl_jax.training.setup import Run, Start, start_run
from asl_jax.training.state import TrainState
from asl_jax.training.step import effective_gamma_neg

#: Fields of the records that measure wall-clock time (they differ between identical runs).
TIMING_KEYS = frozenset({"elapsed", "steps_per_s", "images_per_s", "eta_s"})

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


def itstime(step: int, every: int, total: int) -> bool:
    """Whether a periodic action runs after ``step``: every ``every`` steps (0 = never) and last."""
    return step == total or (every > 0 and step % every == 0)


def train_and_evaluate(
    config: Config | Any,
    workdir: str | os.PathLike[str],
    *,
    source: DataSource | None = None,
    mesh: jax.sharding.Mesh | None = None,
    stop_at_step: int | None = None,
    handle_signals: bool = True,
) -> TrainResult:
    """Trains and evaluates a model as configured, in ``workdir`` (resuming if possible).

    Args:
      config: a :class:`~asl_jax.training.config.Config`, or the ``ml_collections`` config of a
        ``train/configs`` file (converted and checked first).
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
      WorkdirBusyError: another process is writing ``workdir`` (naming it).
      WorkdirConfigError: the workdir's checkpoints come from a config that changes results.
      UnreadableCheckpointError: the workdir has checkpoints, but none can be read.
      NonFiniteError: too many consecutive non-finite steps.
    """
    run, start = start_run(config, workdir, source=source, mesh=mesh)
    with run.lock:  # the workdir's, until summary.json and the plots are written
        stop = StopFlag(handle_signals)
        try:
            loop = _Loop(run, start)
            interrupted = loop.train(stop=stop, stop_at_step=stop_at_step)
        finally:
            stop.restore()
            run.close()
        return _finish(run, loop, interrupted)


class _Loop:
    """The state of a session that the loop advances: the train state, the last checkpoint and
    the epoch's batches (whose position a checkpoint saves)."""

    def __init__(self, run: Run, start: Start):
        self.run = run
        self.state = start.state
        self.step = start.restored_step or 0
        self.last_saved = start.restored_step
        self.data_state = start.data_state  # the restored input pipeline's position
        self.batches: Iterator[dict[str, np.ndarray]] | None = None
        self.records = _TrainRecords(run, int(jax.device_get(self.state.num_skipped)))

    def epoch_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """The rest of the epoch of ``step``; the first one after a resume continues from the
        input pipeline's saved state when the source has one (Grain: folder streaming)."""
        config = self.run.config
        epoch, start = divmod(self.step, self.run.epoch_steps)
        batches = self.run.source.batches(
            BatchRequest.training(
                batch_size=config.batch_size,
                seed=config.seed,
                epoch=epoch,
                start_batch=start,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
        )
        if self.data_state is not None and hasattr(batches, "set_state"):
            batches.set_state(self.data_state)
        self.data_state, self.batches = None, batches
        return batches

    def save(self) -> None:
        """Checkpoints the state, with the evaluation of this step if there is one (the
        checkpointer keeps the best evaluations' checkpoints by it)."""
        scores = next(
            (
                r
                for r in reversed(self.run.log.records)
                if r["kind"] == "eval" and r["step"] == self.step
            ),
            {},
        )
        get_state = getattr(self.batches, "get_state", None)
        self.run.ckpt.save(
            self.state,
            metrics={k: scores.get(k) for k in BEST_METRICS},
            data_state=get_state() if get_state is not None else None,
            config=_plain(self.run.config.to_dict()),
        )
        self.last_saved = self.step

    def check_finite(self) -> None:
        """The non-finite policy: the step skips a bad update; here the run stops after too
        many in a row."""
        limit = self.run.config.max_consecutive_nonfinite
        stopped_at = self.records.flush(limit)
        if stopped_at is None:
            return
        raise NonFiniteError(
            f"training stopped at step {stopped_at}: {limit} consecutive steps had a non-finite "
            f"loss or gradient (the parameters were left unchanged by each); "
            f"{self.last_good()}. Lower learning_rate, set grad_clip_norm, or check the data."
        )

    def last_good(self) -> str:
        """Names the newest checkpoint whose models give finite probabilities on the validation
        split (known from its evaluation, else evaluated now), or says there is none."""
        run = self.run
        run.ckpt.wait()
        evals = {r["step"]: r for r in run.log.records if r["kind"] == "eval"}
        for step in sorted(run.ckpt.all_steps(), reverse=True):
            if step in evals:
                good = is_finite(evals[step])
            else:
                try:
                    restored = run.ckpt.restore(self.state, step)
                except Exception:  # an unreadable checkpoint is no good one
                    continue
                good = is_finite(self.evaluation(restored))
            if good:
                return f"the last good checkpoint is {run.ckpt.path(step)} (step {step})"
        if self.last_saved is None:
            return "no checkpoint was saved yet"
        return "no checkpoint of this run gives finite probabilities on the validation split"

    def evaluation(self, state: TrainState) -> dict[str, Any]:
        run = self.run
        return evaluate(
            run.programs.eval,
            state,
            run.source,
            batch_size=run.config.evaluation_batch_size,
            mesh=run.mesh,
            threshold=run.config.threshold,
        )

    def evaluate_and_log(self) -> bool:
        """Evaluates and writes the eval record; returns whether it sets a best (see
        :func:`_sets_a_best`).

        Raises:
          NonFiniteError: the probabilities of a model are not all finite (recorded first):
            the parameters diverged, and the non-finite policy would keep them as they are.
        """
        run = self.run
        scores = self.evaluation(self.state)
        # Every host computes the same scores from the same replicated outputs; agreeing anyway
        # guarantees that all take part in the checkpoint that follows.
        new_best = agree(_sets_a_best(run.log.records, scores))
        run.log.write({"kind": "eval", "step": self.step, "elapsed": run.elapsed(), **scores})
        if not is_finite(scores):
            counts = ", ".join(
                f"{scores[key]} of the {model} model"
                for key, model in (("nonfinite_probs", "regular"), ("nonfinite_probs_ema", "EMA"))
                if scores[key]
            )
            progress.log(f"step {self.step}: non-finite probabilities ({counts})")
            raise NonFiniteError(
                f"training stopped at step {self.step}: the evaluation found non-finite "
                f"probabilities ({counts}): the parameters diverged; {self.last_good()}. "
                "Lower learning_rate, set grad_clip_norm, or check the data."
            )
        progress.log(
            f"step {self.step}: mAP {100 * scores['map']:.2f}% (EMA {100 * scores['map_ema']:.2f}%)"
        )
        return new_best

    def train(self, *, stop: StopFlag, stop_at_step: int | None) -> int | None:
        """Steps until the end or an interruption; returns the interrupting signal (or None)."""
        run = self.run
        config, total = run.config, run.total_steps
        eval_every = eval_interval(config.eval_every, total)
        profiler = _Profiler(run, self.step)
        interrupted: int | None = None
        progress.log(
            f"Training {config.model.name} on {run.source.name} ({run.source.num_classes} "
            f"classes) with {config.loss.name}: steps {self.step} -> {total} ({run.epoch_steps} "
            f"per epoch), global batch {config.batch_size} on {run.mesh.size} device(s), "
            f"{jax.process_count()} process(es); workdir {run.workdir}"
        )
        while self.step < total and interrupted is None:
            for batch in self.epoch_batches():
                self.state, metrics = run.programs.train(
                    self.state, parallel.shard_batch(batch, run.mesh)
                )
                self.step += 1
                step = self.step
                self.records.add(step, metrics)
                profiler.after_step(step, self.state)
                if run.progress_bar is not None:
                    run.progress_bar.update(1)
                at_log = itstime(step, config.log_every, total)
                # Fetch at least every max_consecutive_nonfinite steps, so that a run of bad
                # steps is noticed when it reaches the limit.
                fetch = at_log or len(self.records.pending) >= config.max_consecutive_nonfinite
                if fetch:
                    self.check_finite()
                requested = stop_at_step is not None and step >= stop_at_step
                interrupted = interruption(stop, step, requested, fetch=fetch)
                new_best = False
                if itstime(step, eval_every, total):
                    self.check_finite()
                    new_best = self.evaluate_and_log()
                # A new best evaluation gets a checkpoint even between checkpoint steps, so that
                # the best checkpoints (kept beside the latest) exist.
                if new_best or itstime(step, config.checkpoint_every, total):
                    self.save()
                if interrupted is not None or step >= total:
                    break
        profiler.finish(self.state)
        self.check_finite()
        if interrupted is not None and self.last_saved != self.step:
            self.save()
        run.ckpt.wait()
        return interrupted


class _TrainRecords:
    """Train-step metrics kept on device until a log boundary, then written in one fetch.

    Fetching only at log boundaries keeps the host from waiting on every step.
    """

    def __init__(self, run: Run, num_skipped: int):
        self.run = run
        self.pending: list[tuple[int, dict[str, jax.Array]]] = []
        self.num_skipped = num_skipped  # of the earlier sessions
        # Speed of this session, from the first fetch on (compilation is not counted).
        self.rate = progress.StepRate(run.config.batch_size)

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self.pending.append((step, metrics))

    def flush(self, nonfinite_limit: int) -> int | None:
        """Writes the pending train records up to the first step that ends a run of
        ``nonfinite_limit`` non-finite steps, and returns that step (None when there is none)."""
        run = self.run
        fetched = jax.device_get([m for _, m in self.pending])
        if self.pending:
            self.rate.mark(self.pending[-1][0])  # the fetch waited for that step
            if run.progress_bar is not None:
                run.progress_bar.synced(self.pending[-1][0])
        for (step, _), m in zip(self.pending, fetched, strict=True):
            self.num_skipped += int(m["skipped"])
            if itstime(step, run.config.log_every, run.total_steps):
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
        if run.progress_bar is not None:
            run.progress_bar.set_metrics(
                loss=f"{record['loss']:.4g}", gamma_neg=f"{record['gamma_neg']:.3g}"
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


class _Profiler:
    """A ``jax.profiler`` trace of ``profile_steps`` steps into ``WORKDIR/profile`` (process 0).

    It starts after the session's first step, which compiles the program, so the trace shows
    steady-state steps; open it with TensorBoard's Profile tab or Perfetto (``*.trace.json.gz``).
    """

    def __init__(self, run: Run, first_step: int):
        steps = run.config.profile_steps if jax.process_index() == 0 else 0
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
            progress.log(f"Profile of steps {self.start + 1}-{self.stop} in {self.directory}.")


def _finish(run: Run, loop: _Loop, interrupted: int | None) -> TrainResult:
    """Writes ``summary.json`` and the plots; returns the result."""
    config = run.config
    step = loop.step
    # The γ− the loss applies after the last step: the state's (adaptive) value, as the loss
    # reads it (0 for BCE, focal_gamma for focal).
    gamma_neg = float(jax.device_get(effective_gamma_neg(config.loss, loop.state.gamma_neg)))
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
            "checkpoint": run.ckpt.path(loop.last_saved) if loop.last_saved is not None else None,
            "num_devices": run.mesh.size,
            "num_processes": jax.process_count(),
            "unknown_labels": _unknown_labels(run.source),
            "train_labels": _label_counts(split_labels(run.source, "train")),
            "class_prior": _class_prior(loop.state, run.source),
            "final_gamma_neg": gamma_neg if step > 0 else None,
        },
    )
    if jax.process_index() == 0:
        write_json(os.path.join(run.workdir, "summary.json"), summary)
        try:
            from asl_jax.training.plots import plot_run

            target = config.loss.delta_p_target if config.loss.adaptive else None
            plot_run(run.log.records, os.path.join(run.workdir, "plots"), delta_p_target=target)
        except Exception as e:  # plots are a convenience: never lose a run to them
            progress.log(f"warning: could not write plots: {e!r}")
    return TrainResult(loop.state, summary, list(run.log.records), interrupted, run.workdir)


def _label_counts(labels: np.ndarray | None) -> dict[str, int] | None:
    """How many labels are positive, negative and unknown (after any simulated annotation)."""
    if labels is None:
        return None
    known = known_labels_mask(labels)
    return {
        "positive": int(np.count_nonzero(known & (labels > 0))),
        "negative": int(np.count_nonzero(known & (labels == 0))),
        "unknown": int(np.count_nonzero(~known)),
    }


def _class_prior(state: TrainState, source: DataSource) -> dict[str, float] | None:
    """The class-prior estimate at the end, per class name (a loss that reads it; else None)."""
    if state.class_prior is None:
        return None
    values = np.asarray(jax.device_get(state.class_prior)).tolist()
    return dict(zip(source.class_names, values, strict=True))


def _unknown_labels(source: DataSource) -> dict[str, int] | None:
    """Per split, how many label entries are unknown (-1: left out of the loss, Δp and the
    metrics); None when the source does not expose its labels."""
    counts = {}
    for split in ("train", "val"):
        labels = split_labels(source, split)
        if labels is None:
            return None
        counts[split] = int(np.count_nonzero(~known_labels_mask(labels)))
    return counts
