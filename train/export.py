"""``python -m train.export``: a trained run's model for PyTorch, ONNX Runtime or ``jax.export``.

    python -m train.export --workdir=runs/ft --output=model.safetensors
    python -m train.export --workdir=runs/ft --ema --best --output=model.pth
    python -m train.export --workdir=runs/ft --format=onnx --output=model.onnx
    python -m train.export --workdir=runs/ft --format=stablehlo --output=model.stablehlo

``--format=onnx`` and ``--format=stablehlo`` write the whole inference function of any model of
the registry (:mod:`train.portable`): float32 images ``[batch, S, S, 3]`` in ``[0, 1]``, the
model's input normalisation, the network and a sigmoid; the batch size is free. The ONNX file
stores the model name, step, image size, normalisation, the classes and one threshold per class
(the run's ``threshold``, or with ``--thresholds=tuned`` those of ``thresholds.json``) in its
metadata, and ``python -m train.predict --model=FILE.onnx`` predicts with it. The StableHLO file
is a ``jax.export`` serialisation (``jax.export.deserialize(data).call(images)``); the same
metadata goes beside it, into ``OUTPUT.json``.

The default, ``--format=torch``, writes a PyTorch state dict: the checkpoint (the latest; ``--step
N`` or ``--best``; the EMA model with ``--ema``) of a model with a torch layout (the ResNets,
TResNets and ViT-B/16; see ``model.pretrained``) is converted by
:func:`asl_jax.models.pretrained.to_torch` and written as ``.safetensors`` (no torch needed; the
run's model name, classes and input normalisation go into the file's metadata) or as ``.pth``
(``torch.save`` of a dict of tensors, which ``torch.load(weights_only=True)`` reads). It loads with
``load_state_dict(strict=True)`` into the matching torchvision / timm model built with
``num_classes`` = the run's number of classes, and gives the logits this project's model gives, on
inputs normalised as the printed normalisation says. The file also reads back as
``model.pretrained``, e.g. to fine-tune the exported model further.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from train.reopen import OpenRun, RunError, open_run

#: ``--format`` -> the output extensions it writes.
FORMATS = {
    "torch": (".safetensors", ".pth", ".pt"),
    "onnx": (".onnx",),
    "stablehlo": (".stablehlo",),
}


def _extension(output: str, export_format: str = "torch") -> str:
    """The output's extension, checked against ``export_format`` (``RunError`` naming both)."""
    if export_format not in FORMATS:
        raise RunError(f"--format={export_format}: expected one of {', '.join(FORMATS)}")
    ext = os.path.splitext(output)[1].lower()
    if ext not in FORMATS[export_format]:
        *others, last = FORMATS[export_format]
        expected = f"{', '.join(others)} or {last}" if others else last
        other = [name for name, exts in FORMATS.items() if ext in exts]
        hint = f" (for that extension give --format={other[0]})" if other else ""
        raise RunError(
            f"--output={output}: expected a {expected} file, not {ext or 'none'!r}{hint}"
        )
    return ext


def export_workdir(
    workdir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    ema: bool = False,
    step: int | None = None,
    best: bool = False,
    export_format: str = "torch",
    thresholds: str = "global",
) -> dict[str, Any]:
    """Writes a run's model (see :func:`train.reopen.open_run` for ``step``, ``best``, ``ema``)
    in ``export_format``: :func:`export_run` (``"torch"``) or :func:`export_portable`
    (``"onnx"``, ``"stablehlo"``) of the reopened run.

    Raises:
      RunError: see :func:`train.reopen.open_run`; the output's extension is not one of
        ``FORMATS[export_format]``, ``thresholds="tuned"`` without ``thresholds.json``.
      ImportError: ONNX without the ``export`` extra (checked before the run is opened).
      ValueError: a torch export of a model without torch layout (the small ``cnn``).
    """
    _extension(os.fspath(output), export_format)
    if thresholds not in ("global", "tuned"):
        raise RunError(f"--thresholds={thresholds}: expected global or tuned")
    if export_format == "onnx":
        from train.portable import require_onnx

        require_onnx()
    run = open_run(workdir, step=step, best=best, ema=ema)
    if export_format == "torch":
        if thresholds != "global":
            raise RunError("--thresholds=tuned: a PyTorch state dict stores no thresholds")
        return export_run(run, output, ema=ema)
    return export_portable(run, output, ema=ema, export_format=export_format, thresholds=thresholds)


def _variables(run: OpenRun, ema: bool) -> dict[str, Any]:
    """The regular (or EMA) ``{"params", "batch_stats"}`` of a run, on the host."""
    state = run.state
    params, batch_stats = (
        (state.ema_params, state.ema_batch_stats) if ema else (state.params, state.batch_stats)
    )
    return jax.device_get({"params": params, "batch_stats": batch_stats})


def portable_metadata(run: OpenRun, *, ema: bool, thresholds: str) -> dict[str, str]:
    """What an ONNX / StableHLO export records about its model, as strings.

    Returns:
      ``name``, ``step``, ``model`` (``regular`` / ``ema``), ``image_size``, ``normalization``,
      ``classes`` (a JSON list), ``thresholds`` (a JSON list, one per class) and
      ``thresholds_source`` (``global``: the run's ``threshold``; ``tuned``: ``thresholds.json``).
    """
    from train.predict import tuned_thresholds

    classes = list(run.class_names)
    if thresholds == "tuned":
        per_class = [float(t) for t in tuned_thresholds(run)]
    else:
        per_class = [float(run.config.threshold)] * len(classes)
    return {
        "name": run.config.model.name,
        "step": str(run.step),
        "model": "ema" if ema else "regular",
        "image_size": str(run.config.data.image_size),
        "normalization": run.config.model.normalization,
        "classes": json.dumps(classes),
        "thresholds": json.dumps(per_class),
        "thresholds_source": thresholds,
    }


def export_portable(
    run: OpenRun,
    output: str | os.PathLike[str],
    *,
    ema: bool = False,
    export_format: str = "onnx",
    thresholds: str = "global",
) -> dict[str, Any]:
    """Writes the inference function (:func:`train.portable.inference_function`) of the
    regular (or EMA) model of an opened run as ONNX or StableHLO, computed in float32.

    Returns:
      ``{"workdir", "step", "model", "output", "format", "name", "num_classes",
      "image_size", "metadata"}``; ``metadata`` is :func:`portable_metadata`.
    """
    import jax.numpy as jnp

    from train import portable

    output = os.path.abspath(os.fspath(output))
    _extension(output, export_format)
    metadata = portable_metadata(run, ema=ema, thresholds=thresholds)
    # float32 whatever the run computed in (bfloat16 on an accelerator): what other runtimes
    # run on a CPU, and what the exported probabilities are compared with.
    model = run.programs.model.clone(dtype=jnp.float32)
    function = portable.inference_function(model, _variables(run, ema))
    size = run.config.data.image_size
    if export_format == "onnx":
        data = portable.to_onnx(function, size, metadata)
    else:
        data = portable.to_stablehlo(function, size)
        _write_with_default_mode(
            output + ".json", lambda path: _write_bytes(path, json.dumps(metadata).encode())
        )
    _write_with_default_mode(output, lambda path: _write_bytes(path, data))
    return {
        "workdir": run.workdir,
        "step": run.step,
        "model": metadata["model"],
        "output": output,
        "format": export_format,
        "name": metadata["name"],
        "num_classes": len(run.class_names),
        "image_size": size,
        "metadata": metadata,
    }


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def export_run(
    run: OpenRun, output: str | os.PathLike[str], *, ema: bool = False
) -> dict[str, Any]:
    """Writes the regular (or with ``ema`` the EMA) model of an opened run as a PyTorch state
    dict; returns what was written.

    Returns:
      ``{"workdir", "step", "model", "output", "name", "num_classes", "normalization",
      "source", "num_tensors"}``: ``name`` is the run's ``model.name``, ``source`` the package
      whose model has this layout (``torchvision`` or ``timm``).
    """
    from asl_jax.models import MODELS
    from asl_jax.models.pretrained import SAFETENSORS_EXTENSIONS, to_torch

    output = os.fspath(output)
    ext = _extension(output)
    name = run.config.model.name
    layout = MODELS[name].torch if name in MODELS else None
    if layout is None:
        raise ValueError(f"model.name={name!r} has no PyTorch counterpart to export to")
    variables = _variables(run, ema)
    # Writable C-order copies: torch.from_numpy warns on read-only arrays.
    tensors = {k: np.array(v, order="C") for k, v in to_torch(name, variables).items()}
    info = {
        "workdir": run.workdir,
        "step": run.step,
        "model": "ema" if ema else "regular",
        "output": os.path.abspath(output),
        "name": name,
        "num_classes": len(run.class_names),
        "normalization": run.config.model.normalization,
        "source": layout.source,
        "num_tensors": len(tensors),
    }
    output = info["output"]  # normalised: out/sub/../m.pth is out/m.pth, sub need not exist
    if ext in SAFETENSORS_EXTENSIONS:
        from safetensors.numpy import save_file

        metadata = {k: str(v) for k, v in info.items() if k in ("name", "step", "normalization")}
        metadata["classes"] = json.dumps(list(run.class_names))
        _write_with_default_mode(output, lambda path: save_file(tensors, path, metadata=metadata))
    else:
        try:
            import torch
        except ImportError:
            raise RunError(
                f"--output={output}: writing .pth needs torch; write .safetensors instead"
            ) from None
        torch_tensors = {k: torch.from_numpy(v) for k, v in tensors.items()}
        _write_with_default_mode(output, lambda path: torch.save(torch_tensors, path))
    return info


def _write_with_default_mode(output: str, write: Callable[[str], None]) -> None:
    """``write(path)`` into a temporary file beside ``output``, given the mode a new file gets
    (0666 less the umask: safetensors creates 0600 files), then renamed to ``output``: a failed
    write leaves no half-written file and an existing one as it was."""
    directory = os.path.dirname(output)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(output)}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def format_export(info: dict[str, Any]) -> str:
    """The lines ``python -m train.export`` prints: what was written and how to load it."""
    if info.get("format") in ("onnx", "stablehlo"):
        size = info["image_size"]
        load = {
            "onnx": "onnxruntime.InferenceSession(...); input 'images'",
            "stablehlo": "jax.export.deserialize(...).call(images); input",
        }[info["format"]]
        return "\n".join(
            [
                f"{info['output']}: {info['name']} as {info['format']} ({info['model']} model, "
                f"step {info['step']}, {info['num_classes']} classes)",
                f"load with {load} float32 [batch, {size}, {size}, 3] in [0, 1] (normalised "
                f"inside), output: probabilities [batch, {info['num_classes']}]",
            ]
        )
    builder = {
        "torchvision": f"torchvision.models.{info['name']}(num_classes={info['num_classes']})",
        "timm": f"timm.create_model(<timm name of {info['name']}>, "
        f"num_classes={info['num_classes']})",
    }[info["source"]]
    return "\n".join(
        [
            f"{info['output']}: {info['num_tensors']} tensors of {info['name']} "
            f"({info['model']} model, step {info['step']}, {info['num_classes']} classes)",
            f"load with {builder}.load_state_dict(..., strict=True); "
            f"inputs in [0, 1], normalisation {info['normalization']!r}",
        ]
    )


def main(argv: list[str]) -> int:
    from absl import flags

    from train import cli

    cli.quiet_logging()
    if len(argv) > 1:
        return cli.error(f"unexpected argument(s): {' '.join(argv[1:])}", status=2)
    f = flags.FLAGS
    try:
        choice = {name: getattr(f, name) for name in ("ema", "step", "best", "thresholds")}
        info = export_workdir(f.workdir, f.output, export_format=f.format, **choice)
    except (RunError, ValueError, ImportError) as e:
        return cli.error(str(e))
    print(format_export(info), flush=True)
    return 0


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "The run's workdir (of python -m train).", required=True)
    flags.DEFINE_string(
        "output",
        None,
        "The file to write: .safetensors or .pth (torch), .onnx, .stablehlo.",
        required=True,
    )
    flags.DEFINE_enum(
        "format", "torch", list(FORMATS), "torch: a PyTorch state dict; onnx; stablehlo."
    )
    flags.DEFINE_enum(
        "thresholds",
        "global",
        ["global", "tuned"],
        "onnx / stablehlo: store the run's threshold (global) or WORKDIR/thresholds.json's.",
    )
    flags.DEFINE_bool("ema", False, "Export the EMA model instead of the regular one.")
    flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).")
    flags.DEFINE_bool("best", False, "The checkpoint of the best validation mAP (summary.json).")


if __name__ == "__main__":
    from train import cli

    cli.run(main, _define_flags)
