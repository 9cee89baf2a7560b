"""``python -m train.predict``: the labels a trained run gives to image files.

    python -m train.predict --workdir=runs/default photo.jpg more/photos/
    python -m train.predict --workdir=runs/default --ema --threshold=0.3 --top_k=5 photo.jpg
    python -m train.predict --workdir=runs/default --json photos/ > predictions.json

For every image: the labels whose probability is at least the threshold (default: the run's
``threshold``; ``--threshold`` overrides), most probable first, at most ``--top_k`` of them
(``--threshold=0 --top_k=5`` gives the five most probable labels). Directories are expanded to
the images they contain (``.jpg .jpeg .png .bmp .gif .webp``, any case, not recursive, sorted by
name). Images go through exactly the training preprocessing
(:func:`asl_jax.data.folder.load_image`: RGB, squish-resized to ``data.image_size``) and the
model in inference mode (the EMA model with ``--ema``), from the latest checkpoint (``--step N``:
that step's). Class names: the run's ``classes.txt``.

``--json`` prints one JSON object: ``workdir``, ``step``, ``model``, ``threshold``, ``top_k``,
``predictions`` (per image: ``image``, ``labels`` = ``[{"label", "probability"}]`` as selected,
``probabilities`` = every class's probability) and ``errors`` (``[{"image", "error"}]``).

A missing or unreadable image is reported by name (on stderr, and in ``errors``); the other
images are still predicted, and the exit status is 1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from train.reopen import RunError, open_run, read_workdir_config

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Image files from files and directories.

    Args:
      inputs: paths of image files or directories.

    Returns:
      ``(images, errors)``: the image paths in order (a directory's images sorted by name) and
      ``{"image", "error"}`` for each input that does not exist or is a directory without images.
    """
    images: list[str] = []
    errors: list[dict[str, str]] = []
    for path in inputs:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.lower().endswith(IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(path, name))
            )
            if not found:
                errors.append(
                    {
                        "image": path,
                        "error": f"directory without images ({' '.join(IMAGE_EXTENSIONS)})",
                    }
                )
            images.extend(found)
        elif os.path.exists(path):
            images.append(path)
        else:
            errors.append({"image": path, "error": "no such file or directory"})
    return images, errors


def select_labels(
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    threshold: float | np.ndarray,
    top_k: int | None = None,
) -> list[dict[str, Any]]:
    """``[{"label", "probability"}]``: classes with ``probs >= threshold``, most probable first.

    ``threshold`` is one number or one per class. Ties keep the class order; ``top_k`` keeps at
    most that many.
    """
    order = np.argsort(-probs, kind="stable")
    per_class = np.broadcast_to(np.asarray(threshold, dtype=np.float64), probs.shape)
    chosen = [int(k) for k in order if probs[k] >= per_class[k]]
    if top_k is not None:
        chosen = chosen[:top_k]
    return [{"label": class_names[k], "probability": float(probs[k])} for k in chosen]


def tuned_thresholds(run: Any) -> np.ndarray:
    """The per-class thresholds of ``WORKDIR/thresholds.json`` (``train.evaluate
    --tune_thresholds``), in the run's class order."""
    from asl_jax.training.records import read_json

    path = os.path.join(run.workdir, "thresholds.json")
    if not os.path.isfile(path):
        raise RunError(
            f"--thresholds=tuned: {path} does not exist; write it with python -m train.evaluate "
            f"--workdir={run.workdir} --tune_thresholds=train (or =val)"
        )
    tuned = read_json(path)["thresholds"]
    missing = [name for name in run.class_names if name not in tuned]
    if missing:
        raise RunError(f"--thresholds=tuned: {path} has no threshold for class(es) {missing[:5]}")
    return np.array([tuned[name] for name in run.class_names], dtype=np.float64)


def _check_arguments(
    inputs: Sequence[str], threshold: float | None, thresholds: str, top_k: int | None
) -> None:
    if not inputs:
        raise ValueError("no image given: pass image files or directories")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold={threshold}: expected a probability in [0, 1]")
    if thresholds not in ("global", "tuned"):
        raise ValueError(f"--thresholds={thresholds!r}: expected global or tuned")
    if thresholds == "tuned" and threshold is not None:
        raise ValueError("give --threshold or --thresholds=tuned, not both")
    if top_k is not None and top_k < 1:
        raise ValueError(f"--top_k={top_k}: expected an integer >= 1")


def predict_files(
    workdir: str | os.PathLike[str],
    inputs: Sequence[str],
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    ema: bool = False,
    step: int | None = None,
    thresholds: str = "global",
) -> dict[str, Any]:
    """Predicts the labels of image files (and the images of directories) with a trained run.

    Args:
      workdir: a workdir of ``python -m train``.
      inputs: image files and directories.
      threshold: minimum probability of a reported label (default: the run's ``threshold``).
      top_k: report at most this many labels per image (default: no limit).
      ema: use the EMA model.
      step: the checkpoint (default: the latest).
      thresholds: ``"global"`` (one threshold) or ``"tuned"``: the per-class thresholds of
        ``WORKDIR/thresholds.json``, written by ``train.evaluate --tune_thresholds``.

    Returns:
      ``workdir``, ``step``, ``model``, ``threshold`` (a number, or ``"tuned"``), ``top_k``,
      ``predictions`` and ``errors``
      (see the module docstring).

    Raises:
      RunError: missing workdir, no checkpoint, no such step.
      ValueError: bad ``threshold`` or ``top_k``, or no input.
    """
    import jax

    from asl_jax.data.folder import load_image
    from asl_jax.training.parallel import shard_batch

    _check_arguments(inputs, threshold, thresholds, top_k)
    images, errors = expand_inputs(inputs)

    config = read_workdir_config(os.path.abspath(os.fspath(workdir)))
    # Chunks of a fixed size (the last one padded): one compiled program for all of them.
    chunk = max(1, min(config.evaluation_batch_size, len(images)))
    run = open_run(workdir, step=step, batch_size=chunk)
    per_class = tuned_thresholds(run) if thresholds == "tuned" else None
    if threshold is None:
        threshold = run.config.threshold
    size = run.config.data.image_size
    key = "probs_ema" if ema else "probs"
    predictions: list[dict[str, Any]] = []
    for start in range(0, len(images), chunk):
        loaded, names = [], []
        for path in images[start : start + chunk]:
            try:
                loaded.append(load_image(path, size))
                names.append(path)
            except Exception as e:  # Pillow raises many types for bad files
                errors.append({"image": path, "error": f"cannot read image: {e}"})
        if not loaded:
            continue
        batch = np.zeros((chunk, size, size, 3), np.uint8)
        batch[: len(loaded)] = np.stack(loaded)
        mask = np.arange(chunk) < len(loaded)
        labels = np.zeros((chunk, len(run.class_names)), np.float32)
        out = run.programs.eval(
            run.state, shard_batch({"image": batch, "labels": labels, "mask": mask}, run.mesh)
        )
        probs = np.asarray(jax.device_get(out[key]))[: len(loaded)]
        for path, p in zip(names, probs, strict=True):
            predictions.append(
                {
                    "image": path,
                    "labels": select_labels(
                        p,
                        run.class_names,
                        threshold=threshold if per_class is None else per_class,
                        top_k=top_k,
                    ),
                    "probabilities": {
                        name: float(v) for name, v in zip(run.class_names, p, strict=True)
                    },
                }
            )
    order = {path: i for i, path in enumerate(inputs)}
    errors.sort(key=lambda e: order.get(e["image"], len(order)))
    return {
        "workdir": run.workdir,
        "step": run.step,
        "model": "ema" if ema else "regular",
        "threshold": threshold if per_class is None else "tuned",
        "top_k": top_k,
        "predictions": predictions,
        "errors": errors,
    }


def format_predictions(result: dict[str, Any]) -> str:
    """The text printed by ``python -m train.predict`` (without ``--json``)."""
    lines = []
    for pred in result["predictions"]:
        lines.append(pred["image"])
        if pred["labels"]:
            width = max(len(x["label"]) for x in pred["labels"])
            lines += [f"  {x['label']:<{width}}  {x['probability']:.3f}" for x in pred["labels"]]
        else:
            name, p = max(pred["probabilities"].items(), key=lambda item: item[1])
            threshold = result["threshold"]
            bound = "its tuned threshold" if threshold == "tuned" else f"{threshold:g}"
            lines.append(f"  (no label with p >= {bound}; most probable: {name} {p:.3f})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from absl import flags

    from train import cli

    cli.quiet_logging()
    f = flags.FLAGS
    try:
        result = predict_files(
            f.workdir,
            argv[1:],
            threshold=f.threshold,
            top_k=f.top_k,
            ema=f.ema,
            step=f.step,
            thresholds=f.thresholds,
        )
    except (RunError, ValueError) as e:
        return cli.error(str(e))
    for e in result["errors"]:
        print(f"error: {e['image']}: {e['error']}", file=sys.stderr, flush=True)
    if f.json:
        print(json.dumps(result, indent=2), flush=True)
    else:
        print(format_predictions(result), flush=True)
    return 1 if result["errors"] else 0


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "The run's workdir (of python -m train).", required=True)
    flags.DEFINE_float("threshold", None, "Minimum probability of a label (default: config).")
    flags.DEFINE_enum(
        "thresholds",
        "global",
        ["global", "tuned"],
        "global: one threshold; tuned: the per-class ones of WORKDIR/thresholds.json.",
    )
    flags.DEFINE_integer("top_k", None, "At most this many labels per image.")
    flags.DEFINE_bool("ema", False, "Use the EMA model instead of the regular one.")
    flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of text.")


if __name__ == "__main__":
    from train import cli

    cli.run(main, _define_flags)
