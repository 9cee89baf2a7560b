"""How a Flax model's variables correspond to a PyTorch ``state_dict`` (NumPy only, no torch).

Each architecture that can start from PyTorch weights provides a :class:`TorchLayout`: a pair of
converters between a ``state_dict`` (torch names -> arrays in torch's shapes) and Flax variables
(``{"params": ..., "batch_stats": ...}``), the torch name prefix of its classifier head (kept or
re-initialised when fine-tuning), and the input normalisation its published weights expect.
:mod:`asl_jax.models.pretrained` does the checking and loading on top of these.

Models whose Flax module tree mirrors the torch module tree (submodule names equal to torch's, so
``layer1.0.conv1.weight`` is ``params["layer1"]["0"]["conv1"]["kernel"]``) can use
:func:`mirrored_to_flax` / :func:`mirrored_to_torch`, which only need the naming conventions of
convolutions, linear layers and batch / layer norms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

#: Buffers of torch batch norms that have no Flax counterpart (a counter of training steps).
NUM_BATCHES_TRACKED = "num_batches_tracked"


@dataclasses.dataclass(frozen=True)
class TorchLayout:
    """The PyTorch correspondence of one architecture (``torch``, an optional field of a
    :class:`~asl_jax.models.ModelSpec`).

    Attributes:
      to_flax: ``state_dict -> {"params": nested dict, "batch_stats": nested dict}``; the state
        dict maps torch names to NumPy arrays (``num_batches_tracked`` already removed).
      to_torch: ``variables -> {torch name: NumPy array in torch's shape}``, the head included and
        ``num_batches_tracked`` excluded: exactly the keys and shapes ``to_flax`` reads.
      head: torch name prefix of the classifier head (``"fc"`` for torchvision's ResNet,
        ``"head.fc"`` or ``"head"`` in timm models).
      normalization: the input normalisation (a name of
        :data:`asl_jax.models.normalization.NORMALIZATIONS`) the published weights of this
        architecture expect, used for a weights file when ``model.normalization`` is ``"auto"``.
      source: the package whose models have this layout (``"torchvision"`` or ``"timm"``), for
        messages and for ``model.pretrained='<source>:<name>'``.
      ml_decoder_head: the torch name prefix of an ML-Decoder head on this backbone when it is
        not ``head`` (timm's TResNet and ConvNeXt: ``head``, where their linear classifier is
        ``head.fc``); the Flax module of the ML-Decoder has the same name.
      rename: maps the names of another published layout of the same weights (the official
        ASL code's TResNet) to this layout's, before the names are checked; None = no other.
      flax_head: the Flax module path of the head (``/``-free, ``.``-separated) when it is not
        ``head`` itself (timm's TResNet: torch ``head.fc``, Flax ``head``); ``None`` = ``head``.
    """

    to_flax: Callable[[Mapping[str, np.ndarray]], dict[str, Any]]
    to_torch: Callable[[Mapping[str, Any]], dict[str, np.ndarray]]
    head: str
    normalization: str
    source: str
    flax_head: str | None = None
    ml_decoder_head: str | None = None
    rename: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None = None


def _set(tree: dict[str, Any], path: list[str], value: np.ndarray) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    if path[-1] in tree:
        raise ValueError(f"two state-dict entries map to the Flax variable {'/'.join(path)}")
    tree[path[-1]] = value


def mirrored_to_flax(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Flax variables of a model whose module tree mirrors torch's (see the module docstring).

    ``weight`` becomes ``kernel`` (4-D convolution ``[O, I, H, W]`` -> ``[H, W, I, O]``, 2-D
    linear ``[O, I]`` -> ``[I, O]``) or ``scale`` (1-D, a norm layer); ``bias`` stays ``bias``;
    ``running_mean`` / ``running_var`` become ``batch_stats`` ``mean`` / ``var``.

    Examples:
      >>> v = mirrored_to_flax({"fc.weight": np.zeros((10, 512)), "fc.bias": np.zeros(10)})
      >>> v["params"]["fc"]["kernel"].shape
      (512, 10)
    """
    params: dict[str, Any] = {}
    batch_stats: dict[str, Any] = {}
    for key, value in state_dict.items():
        *module, leaf = key.split(".")
        value = np.asarray(value, np.float32)
        if leaf == "weight" and value.ndim == 4:
            _set(params, [*module, "kernel"], value.transpose(2, 3, 1, 0))
        elif leaf == "weight" and value.ndim == 2:
            _set(params, [*module, "kernel"], value.T)
        elif leaf == "weight" and value.ndim == 1:
            _set(params, [*module, "scale"], value)
        elif leaf == "bias":
            _set(params, [*module, "bias"], value)
        elif leaf in ("running_mean", "running_var"):
            _set(batch_stats, [*module, leaf.removeprefix("running_")], value)
        else:
            raise ValueError(
                f"state-dict entry {key!r} (shape {value.shape}): expected a conv / linear / "
                "norm weight, a bias or batch-norm running statistics"
            )
    return {"params": params, "batch_stats": batch_stats}


def _walk(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
    for name, value in tree.items():
        if isinstance(value, Mapping):
            yield from _walk(value, (*prefix, name))
        else:
            yield (*prefix, name), value


def mirrored_to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse of :func:`mirrored_to_flax`: torch names and shapes, float32 NumPy arrays.

    Examples:
      >>> v = {"params": {"fc": {"kernel": np.zeros((512, 10)), "bias": np.zeros(10)}}}
      >>> {k: v.shape for k, v in mirrored_to_torch(v).items()}
      {'fc.weight': (10, 512), 'fc.bias': (10,)}
    """
    out: dict[str, np.ndarray] = {}
    for path, value in _walk(variables.get("params", {})):
        *module, leaf = path
        value = np.asarray(value, np.float32)
        if leaf == "kernel":
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
            leaf = "weight"
        elif leaf == "scale":
            leaf = "weight"
        elif leaf != "bias":
            raise ValueError(f"Flax parameter {'/'.join(path)}: no torch counterpart")
        out[".".join([*module, leaf])] = np.ascontiguousarray(value)
    for path, value in _walk(variables.get("batch_stats", {})):
        *module, leaf = path
        if leaf not in ("mean", "var"):
            raise ValueError(f"Flax batch statistic {'/'.join(path)}: no torch counterpart")
        out[".".join([*module, f"running_{leaf}"])] = np.asarray(value, np.float32)
    return out
