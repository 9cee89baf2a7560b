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

``--model=FILE.onnx`` (instead of ``--workdir``) predicts with a model exported by
``python -m train.export --format=onnx``, in ONNX Runtime: the image size, the classes and the
per-class thresholds come from the file's metadata (``--threshold`` overrides them), and the
probabilities are those of the exported checkpoint's model, so the labels are the ones
``--workdir`` gives with that checkpoint.

A missing or unreadable image is reported by name (on stderr, and in ``errors``); the other
images are still predicted, and the exit status is 1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
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


def _predict_images(
    images: Sequence[str],
    size: int,
    chunk: int,
    probabilities: Callable[[np.ndarray, int], np.ndarray],
    select: Callable[[np.ndarray], list[dict[str, Any]]],
    class_names: Sequence[str],
    errors: list[dict[str, str]],
) -> list[dict[str, Any]]:
    """The predictions of image files, ``chunk`` at a time.

    Args:
      images: image paths; one that cannot be read is appended to ``errors``.
      size: the side images are squish-resized to.
      chunk: images per call of ``probabilities``.
      probabilities: ``(uint8 [chunk, size, size, 3] zero-padded, number of images) ->
        probabilities [number of images, K]``.
      select: the labels reported for one image's probabilities.
      class_names: the K class names.
      errors: where unreadable images are reported.
    """
    from asl_jax.data.folder import load_image

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
        probs = probabilities(batch, len(loaded))
        for path, p in zip(names, probs, strict=True):
            predictions.append(
                {
                    "image": path,
                    "labels": select(p),
                    "probabilities": {
                        name: float(v) for name, v in zip(class_names, p, strict=True)
                    },
                }
            )
    return predictions


def predict_files(
    workdir: str | os.PathLike[str] | None,
    inputs: Sequence[str],
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    ema: bool = False,
    step: int | None = None,
    thresholds: str = "global",
    model: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Predicts the labels of image files (and the images of directories) with a trained run,
    or with an ONNX model exported from one.

    Args:
      workdir: a workdir of ``python -m train`` (None with ``model``).
      inputs: image files and directories.
      threshold: minimum probability of a reported label (default: the run's ``threshold``;
        with ``model``, the per-class thresholds stored in it).
      top_k: report at most this many labels per image (default: no limit).
      ema: use the EMA model.
      step: the checkpoint (default: the latest).
      thresholds: ``"global"`` (one threshold) or ``"tuned"``: the per-class thresholds of
        ``WORKDIR/thresholds.json``, written by ``train.evaluate --tune_thresholds``.
      model: an ``.onnx`` file of ``train.export --format=onnx``, run in ONNX Runtime, instead
        of ``workdir``.

    Returns:
      ``workdir`` (``model``: the ONNX file), ``step``, ``model``, ``threshold`` (a number, or
      ``"tuned"``), ``top_k``, ``predictions`` and ``errors`` (see the module docstring).

    Raises:
      RunError: missing workdir, no checkpoint, no such step.
      ValueError: bad ``threshold`` or ``top_k``, or no input; both or neither of ``workdir``
        and ``model``; ``ema`` or ``step`` with ``model``.
      ImportError: ``model`` without onnxruntime (the ``export`` extra).
    """
    _check_arguments(inputs, threshold, thresholds, top_k)
    if (workdir is None) == (model is None):
        raise ValueError("give either --workdir or --model (an exported .onnx file)")
    if model is not None:
        return _predict_onnx(os.fspath(model), inputs, threshold, top_k, ema, step, thresholds)
    import jax

    from asl_jax.training.parallel import shard_batch

    images, errors = expand_inputs(inputs)
    config = read_workdir_config(os.path.abspath(os.fspath(workdir)))
    # Chunks of a fixed size (the last one padded): one compiled program for all of them.
    chunk = max(1, min(config.evaluation_batch_size, len(images)))
    run = open_run(workdir, step=step, batch_size=chunk)
    per_class = tuned_thresholds(run) if thresholds == "tuned" else None
    if threshold is None:
        threshold = run.config.threshold
    key = "probs_ema" if ema else "probs"

    def probabilities(batch: np.ndarray, count: int) -> np.ndarray:
        mask = np.arange(chunk) < count
        labels = np.zeros((chunk, len(run.class_names)), np.float32)
        out = run.programs.eval(
            run.state, shard_batch({"image": batch, "labels": labels, "mask": mask}, run.mesh)
        )
        return np.asarray(jax.device_get(out[key]))[:count]

    def select(p: np.ndarray) -> list[dict[str, Any]]:
        bound = threshold if per_class is None else per_class
        return select_labels(p, run.class_names, threshold=bound, top_k=top_k)

    size = run.config.data.image_size
    predictions = _predict_images(
        images, size, chunk, probabilities, select, run.class_names, errors
    )
    return _result(
        run.workdir,
        run.step,
        "ema" if ema else "regular",
        threshold if per_class is None else "tuned",
        top_k,
        predictions,
        errors,
        inputs,
    )


def _result(
    source: str,
    step: int,
    model: str,
    threshold: float | str,
    top_k: int | None,
    predictions: list[dict[str, Any]],
    errors: list[dict[str, str]],
    inputs: Sequence[str],
) -> dict[str, Any]:
    """The result of :func:`predict_files`, errors in the order of the inputs."""
    order = {path: i for i, path in enumerate(inputs)}
    errors.sort(key=lambda e: order.get(e["image"], len(order)))
    return {
        "workdir": source,
        "step": step,
        "model": model,
        "threshold": threshold,
        "top_k": top_k,
        "predictions": predictions,
        "errors": errors,
    }


#: Images per ONNX Runtime call (the exported model takes any batch size).
ONNX_CHUNK = 32


def _predict_onnx(
    path: str,
    inputs: Sequence[str],
    threshold: float | None,
    top_k: int | None,
    ema: bool,
    step: int | None,
    thresholds: str,
) -> dict[str, Any]:
    """:func:`predict_files` with an exported ONNX model."""
    from train.portable import onnx_metadata, onnx_probabilities, onnx_session

    if ema or step is not None:
        raise ValueError(
            "--ema and --step choose a checkpoint of a workdir; an ONNX file holds the one "
            "model it was exported from (choose it with python -m train.export)"
        )
    if not os.path.isfile(path):
        raise RunError(f"--model={path}: no such file")
    session = onnx_session(path)
    metadata = onnx_metadata(session)
    needed = ("classes", "thresholds", "image_size", "step", "model")
    missing = [key for key in needed if key not in metadata]
    if missing:
        raise RunError(
            f"--model={path}: no {', '.join(missing)} in its metadata; export it with "
            "python -m train.export --format=onnx"
        )
    class_names = json.loads(metadata["classes"])
    stored = np.array(json.loads(metadata["thresholds"]), np.float64)
    if thresholds == "tuned" and metadata.get("thresholds_source") != "tuned":
        raise ValueError(
            f"--thresholds=tuned: {path} stores the run's global threshold; export it with "
            "--thresholds=tuned"
        )
    images, errors = expand_inputs(inputs)

    def probabilities(batch: np.ndarray, count: int) -> np.ndarray:
        return onnx_probabilities(session, batch[:count].astype(np.float32) * (1.0 / 255.0))

    def select(p: np.ndarray) -> list[dict[str, Any]]:
        bound = stored if threshold is None else threshold
        return select_labels(p, class_names, threshold=bound, top_k=top_k)

    size = int(metadata["image_size"])
    chunk = max(1, min(ONNX_CHUNK, len(images)))
    predictions = _predict_images(images, size, chunk, probabilities, select, class_names, errors)
    if threshold is None:
        source = metadata.get("thresholds_source", "global")
        threshold = "tuned" if source == "tuned" else float(stored[0])
    return _result(
        os.path.abspath(path),
        int(metadata["step"]),
        metadata["model"],
        threshold,
        top_k,
        predictions,
        errors,
        inputs,
    )


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
            model=f.model,
            threshold=f.threshold,
            top_k=f.top_k,
            ema=f.ema,
            step=f.step,
            thresholds=f.thresholds,
        )
    except (RunError, ValueError, ImportError) as e:
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

    flags.DEFINE_string("workdir", None, "The run's workdir (of python -m train).")
    flags.DEFINE_string(
        "model", None, "Instead of --workdir: a .onnx file of python -m train.export --format=onnx."
    )
    flags.register_multi_flags_validator(
        ["workdir", "model"],
        lambda values: (values["workdir"] is None) != (values["model"] is None),
        message="--workdir is required: the workdir of a training run, or instead of it "
        "--model=FILE.onnx (python -m train.export --format=onnx); not both",
    )
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
