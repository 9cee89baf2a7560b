"""A model's inference function as a program other runtimes can load: ONNX and StableHLO.

:func:`inference_function` is what an exported model computes: float32 images ``[B, H, W, 3]``
in ``[0, 1]``, the model's own input normalisation, the network in inference mode and a sigmoid:
per-class probabilities ``[B, K]``. :func:`to_stablehlo` serialises it with ``jax.export`` and a
symbolic batch size; :func:`to_onnx` converts it with ``jax2onnx`` (the ``export`` extra), with a
dynamic batch dimension.

``jax2onnx`` converts one JAX primitive at a time, and some of the primitives our models use
have no conversion that ONNX Runtime runs: ``reduce_window_max`` (max pooling) becomes an ONNX
``MaxPool`` over all four axes, which ONNX Runtime refuses, and ``pad`` cannot be converted when
the batch size is symbolic. :func:`portable` evaluates the traced program with those primitives
replaced by equivalent ones that convert (strided slices and element-wise maxima; broadcast
constants and concatenation), and inlines nested ``jit`` and ``custom_jvp`` calls so that none
of them hides an unconvertible primitive.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

#: The extra that installs what :func:`to_onnx` and ONNX prediction need.
EXPORT_EXTRA = 'pip install -e ".[export]"'
#: The name of the batch dimension in the exported programs.
BATCH = "batch"
#: Names of the ONNX model's input and output.
ONNX_INPUT, ONNX_OUTPUT = "images", "probabilities"


def inference_function(
    model: Any, variables: Mapping[str, Any]
) -> Callable[[jax.Array], jax.Array]:
    """The function an exported model computes.

    Args:
      model: a Flax module of :func:`asl_jax.models.create_model` (it normalises its input).
      variables: its ``{"params", "batch_stats"}`` (``batch_stats`` may be empty).

    Returns:
      ``images -> probabilities``: float32 ``[B, H, W, 3]`` in ``[0, 1]`` to the float32
      sigmoid of the logits, ``[B, K]``.
    """
    variables = {k: v for k, v in variables.items() if v}  # ViT, ConvNeXt: no batch_stats

    def probabilities(images: jax.Array) -> jax.Array:
        logits = model.apply(variables, images, train=False)
        return jax.nn.sigmoid(logits.astype(jnp.float32))

    return probabilities


def image_spec(image_size: int) -> jax.ShapeDtypeStruct:
    """The input of an exported model: float32 ``[batch, image_size, image_size, 3]``, the
    batch size symbolic."""
    (batch,) = jax.export.symbolic_shape(BATCH)
    return jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)


def _max_pool(operand: jax.Array, **params: Any) -> jax.Array:
    """``reduce_window_max`` as the maximum of one strided slice per window offset."""
    if any(d != 1 for d in params["base_dilation"]):
        raise NotImplementedError("reduce_window_max with base dilation cannot be exported")
    padded = _pad(
        operand,
        jnp.array(-jnp.inf, operand.dtype),
        padding_config=[(lo, hi, 0) for lo, hi in params["padding"]],
    )
    windows, strides = params["window_dimensions"], params["window_strides"]
    dilations = params["window_dilation"]
    out_shape = [
        (size - (w - 1) * d - 1) // s + 1
        for size, w, d, s in zip(padded.shape, windows, dilations, strides, strict=True)
    ]
    result = None
    for offset in itertools.product(*(range(w) for w in windows)):
        start = [o * d for o, d in zip(offset, dilations, strict=True)]
        limit = [b + (n - 1) * s + 1 for b, n, s in zip(start, out_shape, strides, strict=True)]
        window = lax.slice(padded, start, limit, strides)
        result = window if result is None else lax.max(result, window)
    return result


def _pad(operand: jax.Array, padding_value: jax.Array, *, padding_config: Any) -> jax.Array:
    """``lax.pad`` as concatenation with broadcast constants (and slices for negative pads),
    one axis at a time: shapes stay expressions of the symbolic batch size."""
    out = operand
    for axis, (low, high, interior) in enumerate(padding_config):
        if interior:
            raise NotImplementedError("lax.pad with interior padding cannot be exported")
        size = out.shape[axis]
        out = lax.slice_in_dim(out, max(-low, 0), size - max(-high, 0), axis=axis)

        parts = [_filled(padding_value, out, axis, low)] if low > 0 else []
        parts.append(out)
        if high > 0:
            parts.append(_filled(padding_value, out, axis, high))
        if len(parts) > 1:
            out = lax.concatenate(parts, axis)
    return out


def _filled(value: Any, like: jax.Array, axis: int, size: int) -> jax.Array:
    """``like``'s shape with ``size`` along ``axis``, filled with ``value``."""
    shape = list(like.shape)
    shape[axis] = size
    return jnp.broadcast_to(jnp.asarray(value, like.dtype), shape)


_REPLACED: dict[str, Callable[..., jax.Array]] = {
    "reduce_window_max": _max_pool,
    "pad": _pad,
}


def _evaluate(closed: Any, *args: Any) -> list[Any]:
    """Evaluates a closed jaxpr, inlining nested calls and replacing the primitives of
    ``_REPLACED``."""
    from jax.extend import core

    jaxpr = closed.jaxpr
    env: dict[Any, Any] = dict(zip(jaxpr.constvars, closed.consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))

    def read(var: Any) -> Any:
        return var.val if isinstance(var, core.Literal) else env[var]

    for eqn in jaxpr.eqns:
        inputs = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name in ("pjit", "jit"):
            outputs = _evaluate(eqn.params["jaxpr"], *inputs)
        elif name in ("custom_jvp_call", "custom_vjp_call"):
            # Inference only: the primal computation, without its custom derivative.
            outputs = _evaluate(eqn.params["call_jaxpr"], *inputs)
        elif name in _REPLACED:
            outputs = [_REPLACED[name](*inputs, **eqn.params)]
        else:
            outputs = eqn.primitive.bind(*inputs, **eqn.params)
            if not eqn.primitive.multiple_results:
                outputs = [outputs]
        env.update(zip(eqn.outvars, outputs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def portable(
    function: Callable[[jax.Array], jax.Array], spec: jax.ShapeDtypeStruct
) -> Callable[[jax.Array], jax.Array]:
    """``function`` re-expressed in primitives that ``jax2onnx`` converts and ONNX Runtime runs.

    Args:
      function: a JAX function of one array.
      spec: the shape and dtype it is traced at (the batch dimension may be symbolic).

    Returns:
      A function of an array of ``spec``'s shape that computes what ``function`` computes:
      max pooling gives the same values exactly, padding too.
    """
    closed = jax.make_jaxpr(function)(spec)

    def rewritten(images: jax.Array) -> jax.Array:
        (out,) = _evaluate(closed, images)
        return out

    return rewritten


def to_stablehlo(function: Callable[[jax.Array], jax.Array], image_size: int) -> bytes:
    """``jax.export`` serialisation of ``function`` on CPU, for any batch size.

    Args:
      function: ``images -> probabilities`` (:func:`inference_function`).
      image_size: the side of the square images it takes.

    Returns:
      The serialised ``jax.export.Exported``; reload it with
      ``jax.export.deserialize(data).call(images)``.
    """
    exported = jax.export.export(jax.jit(function), platforms=("cpu",))(image_spec(image_size))
    return bytes(exported.serialize())


def require_onnx() -> None:
    """Raises ``ImportError`` (one line: which extra to install) without jax2onnx or onnxruntime."""
    for package in ("jax2onnx", "onnxruntime"):
        try:
            __import__(package)
        except ImportError:
            raise ImportError(
                f"ONNX needs {package}, which is not installed: {EXPORT_EXTRA}"
            ) from None


def to_onnx(
    function: Callable[[jax.Array], jax.Array],
    image_size: int,
    metadata: Mapping[str, str],
) -> bytes:
    """``function`` as a serialised ONNX model with a dynamic batch dimension.

    Args:
      function: ``images -> probabilities`` (:func:`inference_function`).
      image_size: the side of the square images it takes.
      metadata: stored as the model's ``metadata_props`` (strings).

    Returns:
      The ``ModelProto``'s bytes: input ``images`` float32 ``[batch, S, S, 3]``, output
      ``probabilities`` float32 ``[batch, K]``.
    """
    require_onnx()
    # jax2onnx logs a warning for each of its plugins that does not import with this JAX (none
    # of them is one our models need), onnx_ir one for each shape constant it leaves untyped,
    # and the Flax plugins print debugging lines: none says anything about this conversion.
    for logger in ("jax2onnx", "onnx_ir"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    import jax2onnx

    spec = image_spec(image_size)
    with contextlib.redirect_stdout(io.StringIO()):
        proto = jax2onnx.to_onnx(
            portable(function, spec),
            [spec],
            model_name="asl_jax",
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
        )
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def onnx_session(path: str | os.PathLike[str]) -> Any:
    """An ONNX Runtime CPU session of an exported model."""
    require_onnx()
    import onnxruntime

    return onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])


def onnx_metadata(session: Any) -> dict[str, str]:
    """The metadata an exported ONNX model stores (see :func:`to_onnx`)."""
    return dict(session.get_modelmeta().custom_metadata_map)


def onnx_probabilities(session: Any, images: np.ndarray | Sequence[Any]) -> np.ndarray:
    """The probabilities ``[B, K]`` of float32 images ``[B, H, W, 3]`` in ``[0, 1]``."""
    batch = np.asarray(images, np.float32)
    return session.run([ONNX_OUTPUT], {ONNX_INPUT: batch})[0]
