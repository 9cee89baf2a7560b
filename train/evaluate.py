"""``python -m train.evaluate``: the metrics of a checkpoint of a run on a split.

    python -m train.evaluate --workdir=runs/default                  # latest checkpoint, val
    python -m train.evaluate --workdir=runs/default --ema --best     # EMA model, best checkpoint
    python -m train.evaluate --workdir=runs/default --split=train --best --output=train.json

Reads ``WORKDIR/config.json``, rebuilds the data source and the model of the run, restores the
latest checkpoint (``--step N``: that step's; ``--best``: the step of the best validation mAP in
``summary.json``, of the EMA model with ``--ema``, whose checkpoint training keeps), and computes
mAP, CP, CR, CF1, OP, OR and OF1 (threshold: the run's ``threshold``, or ``--threshold``) of the
regular model, or of the EMA model with ``--ema``. Prints a table and writes ``WORKDIR/eval.json``
(or ``--output``): the metrics as fractions in [0, 1] and the AP of every class with its name and
number of positives (``ap`` is null for a class without positives in the split; the mAP is the
mean over the others, as during training).

``--split=train`` evaluates the training images without augmentation, against the labels the run
trained on (with ``data.drop_positive_fraction`` those miss the dropped positives).

``--tune_thresholds=train`` (or ``val``) also picks, per class, the threshold that maximises that
class's F1 on that split (ties: the lower one; a class without positives keeps the run's
threshold), writes them to ``WORKDIR/thresholds.json`` (used by ``train.predict
--thresholds=tuned``) and reports CP ... OF1 at them beside the global threshold's. Tuning and
scoring on the same split flatters the tuned numbers: a warning says so.

Exit status 1 with a one-line message for a missing workdir, no checkpoint, a step without a
checkpoint, a checkpoint that cannot be read or one whose model gives non-finite probabilities,
and for writing ``eval.json`` or ``thresholds.json`` into the workdir of a run that is training
(``--output`` elsewhere only reads the workdir, which works while it trains).
Single process; the evaluation uses the local devices that divide the evaluation batch size.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import numpy as np

from asl_jax.metrics import METRIC_LABELS, THRESHOLD_METRICS
from train.reopen import RunError, build_source, open_run

SPLITS = ("val", "train")
#: Where ``--tune_thresholds`` writes the per-class thresholds (in the run's workdir).
THRESHOLDS_FILE = "thresholds.json"

# What the table prints, in this order (the keys of eval.json).
METRICS = ("map", *THRESHOLD_METRICS)


def predict_split(run: Any, source: Any, split: str, *, ema: bool) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``[N, K]`` of the regular (or EMA) model on ``split``, and the labels."""
    from asl_jax.training.evaluation import predict

    outputs = predict(
        run.programs.eval,
        run.state,
        source,
        split,
        batch_size=run.config.evaluation_batch_size,
        mesh=run.mesh,
    )
    return outputs["probs_ema" if ema else "probs"], outputs["labels"]


def _locked_when_writing(fn: Any) -> Any:
    """Runs ``evaluate_workdir`` holding the workdir's lock when it writes into the workdir
    (``eval.json`` by default, ``thresholds.json``), so that it is refused while the run trains;
    writing elsewhere only reads the workdir and takes no lock."""

    @functools.wraps(fn)
    def locked(workdir: str | os.PathLike[str], **kwargs: Any) -> dict[str, Any]:
        from asl_jax.training.lock import lock_workdir

        workdir = os.path.abspath(os.fspath(workdir))
        output = kwargs.get("output")
        writes = (
            kwargs.get("tune_on") is not None
            or output is None
            or (output and os.path.dirname(os.path.abspath(os.fspath(output))) == workdir)
        )
        if not writes or not os.path.isdir(workdir):  # a missing workdir: open_run says so
            return fn(workdir, **kwargs)
        with lock_workdir(workdir):
            return fn(workdir, **kwargs)

    return locked


@_locked_when_writing
def evaluate_workdir(
    workdir: str | os.PathLike[str],
    *,
    split: str = "val",
    ema: bool = False,
    step: int | None = None,
    best: bool = False,
    threshold: float | None = None,
    output: str | os.PathLike[str] | None = None,
    tune_on: str | None = None,
) -> dict[str, Any]:
    """Evaluates a checkpoint of a run and writes ``eval.json``.

    Args:
      workdir: a workdir of ``python -m train`` (or one loss's of ``python -m train.compare``).
      split: ``"val"`` or ``"train"``.
      ema: evaluate the EMA model instead of the regular one.
      step: the checkpoint's step (default: the latest).
      best: the checkpoint of the best validation mAP in ``summary.json``.
      threshold: of CP/CR/CF1/OP/OR/OF1 (default: the run's ``threshold``).
      output: where to write the JSON (default ``workdir/eval.json``); ``""`` writes nothing.
      tune_on: ``"val"`` or ``"train"``: also tune one threshold per class on that split (the
        one that maximises the class's F1), write them to ``workdir/thresholds.json`` and report
        the threshold metrics at them (``tuned``).

    Returns:
      The content of ``eval.json``: ``workdir``, ``checkpoint``, ``step``, ``split``, ``model``
      (``"regular"`` or ``"ema"``), ``num_images``, ``num_classes``, ``threshold``, the metrics
      ``map``, ``cp``, ``cr``, ``cf1``, ``op``, ``or``, ``of1`` (fractions) and ``per_class``
      (``class``, ``ap``, ``num_positives`` per class); with ``tune_on`` also ``tuned``
      (``split``, ``file``, the threshold metrics at the tuned thresholds, ``warning`` when they
      were tuned on the evaluated split) and each class's ``threshold`` in ``per_class``.

    Raises:
      RunError: missing workdir, no checkpoint, no such step, an unreadable checkpoint, data
        that no longer matches.
      ValueError: bad ``split`` or ``threshold``.
      WorkdirBusyError: it would write into the workdir of a run that is training.
    """
    from asl_jax.training.evaluation import per_class_ap, split_metrics
    from asl_jax.training.records import write_json

    for name, value in (("split", split), ("tune_thresholds", tune_on or "val")):
        if value not in SPLITS:
            raise ValueError(f"--{name}={value!r}: expected one of {', '.join(SPLITS)}")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ValueError(f"--threshold={threshold}: expected a probability in (0, 1)")
    run = open_run(workdir, step=step, best=best, ema=ema)
    source = build_source(run.config)
    if tuple(source.class_names) != tuple(run.class_names):
        raise RunError(
            f"the classes of data.name={run.config.data.name!r} ({len(source.class_names)}) are "
            f"not those the run was trained on ({len(run.class_names)}, classes.txt of "
            f"{run.workdir}): the dataset changed since training"
        )
    probs, labels = predict_split(run, source, split, ema=ema)
    _refuse_nonfinite(run, probs, split, ema=ema)
    threshold = run.config.threshold if threshold is None else float(threshold)
    ap = per_class_ap(probs, labels)
    scores = split_metrics(probs, labels, threshold=threshold)
    m_ap = scores.pop("map")
    result: dict[str, Any] = {
        "workdir": run.workdir,
        "checkpoint": run.checkpoint,
        "step": run.step,
        "split": split,
        "model": "ema" if ema else "regular",
        "num_images": int(labels.shape[0]),
        "num_classes": len(run.class_names),
        "threshold": threshold,
        "map": None if np.isnan(m_ap) else m_ap,
        **scores,
        "per_class": [
            {"class": name, "ap": None if np.isnan(a) else float(a), "num_positives": int(n)}
            for name, a, n in zip(run.class_names, ap, (labels > 0.5).sum(0), strict=True)
        ],
    }
    if tune_on is not None:
        result["tuned"] = _tune(run, source, split, tune_on, ema, probs, labels)
        for entry, value in zip(
            result["per_class"], result["tuned"].pop("thresholds"), strict=True
        ):
            entry["threshold"] = value
    if output is None:
        output = os.path.join(run.workdir, "eval.json")
    if output:
        write_json(output, result)
        result["output"] = os.path.abspath(os.fspath(output))
    return result


def _refuse_nonfinite(run: Any, probs: np.ndarray, split: str, *, ema: bool) -> None:
    """A :class:`RunError` when the model gives non-finite probabilities (diverged)."""
    from asl_jax.training.evaluation import nonfinite_count

    bad = nonfinite_count(probs)
    if bad:
        raise RunError(
            f"the {'EMA ' if ema else ''}model of the checkpoint of step {run.step} "
            f"({run.checkpoint}) gives {bad} non-finite probabilities on the {split} split: its "
            "parameters diverged, there are no scores to compute; give --step with an earlier "
            "checkpoint"
        )


def _tune(
    run: Any, source: Any, split: str, tune_on: str, ema: bool, probs: Any, labels: Any
) -> dict[str, Any]:
    """Tunes per-class thresholds on ``tune_on``, writes thresholds.json, and scores ``split``."""
    from asl_jax.losses import known_labels_mask
    from asl_jax.metrics import tune_thresholds
    from asl_jax.training.evaluation import split_metrics
    from asl_jax.training.records import write_json

    tune_probs, tune_labels = (
        (probs, labels) if tune_on == split else predict_split(run, source, tune_on, ema=ema)
    )
    _refuse_nonfinite(run, tune_probs, tune_on, ema=ema)
    known = known_labels_mask(tune_labels)
    thresholds = tune_thresholds(
        tune_probs,
        np.where(known, tune_labels, 0),
        where=known,
        default=run.config.threshold,
    )
    path = os.path.join(run.workdir, THRESHOLDS_FILE)
    write_json(
        path,
        {
            "step": run.step,
            "model": "ema" if ema else "regular",
            "split": tune_on,
            "thresholds": dict(zip(run.class_names, thresholds.tolist(), strict=True)),
        },
    )
    scores = split_metrics(probs, labels, threshold=thresholds)
    scores.pop("map")  # a ranking metric: thresholds do not change it
    tuned: dict[str, Any] = {"split": tune_on, "file": path, **scores}
    tuned["thresholds"] = thresholds.tolist()
    if tune_on == split:
        tuned["warning"] = (
            f"the thresholds were tuned on the {split} split that they are scored on, so these "
            "metrics are optimistic; tune on another split (--tune_thresholds=train) to report"
        )
    return tuned


def format_result(result: dict[str, Any]) -> str:
    """The table printed by ``python -m train.evaluate``."""
    model = "EMA model" if result["model"] == "ema" else "model"
    lines = [
        f"{result['workdir']}: {model} at step {result['step']} on the {result['split']} split "
        f"({result['num_images']} images, {result['num_classes']} classes; threshold "
        f"{result['threshold']:g}).",
        "",
    ]
    tuned = result.get("tuned")
    if tuned:
        lines += [
            f"| metric | % | % at the thresholds tuned on {tuned['split']} |",
            "|---|---|---|",
        ]
    else:
        lines += ["| metric | % |", "|---|---|"]
    for key in METRICS:
        value = "n/a" if result[key] is None else f"{100 * result[key]:.2f}"
        if tuned:
            value += " | " + ("–" if key not in tuned else f"{100 * tuned[key]:.2f}")
        lines.append(f"| {METRIC_LABELS[key]} | {value} |")
    scored = [c for c in result["per_class"] if c["ap"] is not None]
    if scored:
        worst = sorted(scored, key=lambda c: c["ap"])[:3]
        lines += [
            "",
            "Lowest AP: " + ", ".join(f"{c['class']} {100 * c['ap']:.1f}" for c in worst) + ".",
        ]
    if result.get("output"):
        lines.append(f"Per-class AP and the metrics in {result['output']}.")
    if tuned:
        lines.append(f"Per-class thresholds in {tuned['file']} (train.predict --thresholds=tuned).")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from absl import flags

    from asl_jax.training.lock import WorkdirBusyError
    from train import cli

    cli.no_positional_args(argv)
    cli.quiet_logging()
    f = flags.FLAGS
    if f.step is not None and f.best:
        return cli.error("give --step or --best, not both")
    try:
        result = evaluate_workdir(
            f.workdir,
            split=f.split,
            ema=f.ema,
            step=f.step,
            best=f.best,
            threshold=f.threshold,
            output=f.output,
            tune_on=f.tune_thresholds,
        )
    except (RunError, ValueError) as e:
        return cli.error(str(e))
    except WorkdirBusyError as e:
        hint = "" if f.tune_thresholds else "; --output=FILE writes elsewhere, which only reads it"
        return cli.error(f"{e}{hint}")
    if result.get("tuned", {}).get("warning"):
        print(f"warning: {result['tuned']['warning']}", file=sys.stderr, flush=True)
    print(format_result(result), flush=True)
    return 0


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "The run's workdir (of python -m train).", required=True)
    flags.DEFINE_enum("split", "val", ["val", "train"], "The split to evaluate.")
    flags.DEFINE_bool("ema", False, "Evaluate the EMA model instead of the regular one.")
    flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).")
    flags.DEFINE_bool("best", False, "The checkpoint of the best validation mAP (summary.json).")
    flags.DEFINE_float("threshold", None, "Threshold of CP/CR/CF1/OP/OR/OF1 (default: config).")
    flags.DEFINE_string("output", None, "Where to write the JSON (default: WORKDIR/eval.json).")
    flags.DEFINE_enum(
        "tune_thresholds",
        None,
        list(SPLITS),
        "Also tune one threshold per class (max F1) on this split, write them to "
        f"WORKDIR/{THRESHOLDS_FILE} and report the metrics at them.",
    )


if __name__ == "__main__":
    from train import cli

    cli.run(main, _define_flags)
