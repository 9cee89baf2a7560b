"""``python -m train.export``: a trained run's weights as a PyTorch state dict.

    python -m train.export --workdir=runs/ft --output=model.safetensors
    python -m train.export --workdir=runs/ft --ema --best --output=model.pth

The checkpoint (the latest; ``--step N`` or ``--best``; the EMA model with ``--ema``) of a model
with a torch layout (the ResNets, TResNets and ViT-B/16; see ``model.pretrained``) is converted by
:func:`asl_jax.models.pretrained.to_torch` and written as ``.safetensors`` (no torch needed; the
run's model name, classes and input normalisation go into the file's metadata) or as ``.pth``
(``torch.save`` of a dict of tensors, which ``torch.load(weights_only=True)`` reads). It loads
with ``load_state_dict(strict=True)`` into the matching torchvision / timm model built with
``num_classes`` = the run's number of classes, and gives the logits this project's model gives,
on inputs normalised as the printed normalisation says. The file also reads back as
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


def _extension(output: str) -> str:
    from asl_jax.models.pretrained import SAFETENSORS_EXTENSIONS, TORCH_EXTENSIONS

    ext = os.path.splitext(output)[1].lower()
    if ext not in SAFETENSORS_EXTENSIONS + TORCH_EXTENSIONS:
        raise RunError(
            f"--output={output}: expected a .safetensors, .pth or .pt file, not {ext or 'none'!r}"
        )
    return ext


def export_workdir(
    workdir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    ema: bool = False,
    step: int | None = None,
    best: bool = False,
) -> dict[str, Any]:
    """Writes a run's model (see :func:`train.reopen.open_run` for ``step``, ``best``, ``ema``)
    as a PyTorch state dict: :func:`export_run` of the reopened run.

    Raises:
      RunError: see :func:`train.reopen.open_run`; the output's extension is neither
        ``.safetensors`` nor ``.pth`` / ``.pt`` (checked before the run is opened).
      ValueError: the model has no torch layout (the small ``cnn``).
    """
    _extension(os.fspath(output))
    return export_run(open_run(workdir, step=step, best=best, ema=ema), output, ema=ema)


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
    state = run.state
    params, batch_stats = (
        (state.ema_params, state.ema_batch_stats) if ema else (state.params, state.batch_stats)
    )
    variables = jax.device_get({"params": params, "batch_stats": batch_stats})
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
        info = export_workdir(f.workdir, f.output, ema=f.ema, step=f.step, best=f.best)
    except (RunError, ValueError) as e:
        return cli.error(str(e))
    print(format_export(info), flush=True)
    return 0


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "The run's workdir (of python -m train).", required=True)
    flags.DEFINE_string("output", None, "The file to write: .safetensors or .pth.", required=True)
    flags.DEFINE_bool("ema", False, "Export the EMA model instead of the regular one.")
    flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).")
    flags.DEFINE_bool("best", False, "The checkpoint of the best validation mAP (summary.json).")


if __name__ == "__main__":
    from train import cli

    cli.run(main, _define_flags)
