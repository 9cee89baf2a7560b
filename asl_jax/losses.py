"""Asymmetric Loss (ASL) for multi-label and single-label classification.

The multi-label loss has a hand-written gradient (`jax.custom_vjp`) that is evaluated in log space,
so that the loss and its gradient stay finite for every logit a float32 or bfloat16 network can
produce and for every focusing parameter γ ≥ 0, including fractional ones.

Reference:
  Ridnik, Ben-Baruch, Zamir, Noy, Friedman, Protter, Zelnik-Manor, "Asymmetric Loss For Multi-Label
  Classification", ICCV 2021, https://arxiv.org/abs/2009.14119
"""

from __future__ import annotations

import functools
import numbers
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "asymmetric_loss",
    "asymmetric_loss_single_label",
    "known_labels_mask",
    "partial_labels",
    "reduce_loss",
]

Reduction = Literal["sum", "batchmean", "mean"]
REDUCTIONS = ("sum", "batchmean", "mean")

# Below this shifted probability the ratio -log(1 - p_m) / p_m is evaluated from its Taylor series
# 1 + p_m/2 + p_m²/3 + ...: the direct quotient loses its digits to cancellation as p_m -> 0.
# Terms kept per dtype so that the truncation error at the switch point is below the dtype's
# resolution (float32: 0.05⁶/7 ≈ 2e-9; float64: 0.05¹³/14 ≈ 9e-19).
_SERIES_SWITCH = 0.05
_SERIES_TERMS = {np.dtype(np.float32): 6, np.dtype(np.float64): 13}


# ------------------------------------------------------------------------------------------------
# Argument checking (trace time)


def _is_static_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_gamma(name: str, value) -> None:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number >= 0 or a float array, got the bool {value!r}.")
    if _is_static_number(value):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        return
    if not hasattr(value, "dtype"):
        raise TypeError(
            f"{name} must be a number >= 0 or a float array, got {type(value).__name__}."
        )
    if not jnp.issubdtype(value.dtype, jnp.floating) and not jnp.issubdtype(
        value.dtype, jnp.integer
    ):
        raise TypeError(f"{name} must be a real number or array, got dtype {value.dtype}.")
    if not isinstance(value, jax.core.Tracer):
        concrete = np.asarray(value)
        if not np.all(np.isfinite(concrete)) or np.any(concrete < 0):
            raise ValueError(f"{name} must be finite and >= 0, got {concrete!r}.")


def _check_logits_and_labels(logits, labels, *, labels_shape: tuple[int, ...] | None = None):
    if not hasattr(logits, "dtype") or not hasattr(logits, "shape"):
        raise TypeError(f"logits must be an array, got {type(logits).__name__}.")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(
            f"logits must have a floating-point dtype (float16/bfloat16/float32/float64), "
            f"got {logits.dtype}."
        )
    if not hasattr(labels, "shape"):
        labels = np.asarray(labels)
    expected = tuple(logits.shape) if labels_shape is None else labels_shape
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"labels must have shape {expected} (derived from logits of shape "
            f"{tuple(logits.shape)}), got {tuple(labels.shape)}."
        )


def _check_clip(clip) -> float:
    if isinstance(clip, bool) or not _is_static_number(clip):
        raise TypeError(
            f"clip must be a Python number in [0, 1) (it is static), got {type(clip).__name__}."
        )
    if not 0.0 <= clip < 1.0:
        raise ValueError(f"clip (the probability margin m) must lie in [0, 1), got {clip!r}.")
    return float(clip)


def _compute_dtype(dtype) -> jnp.dtype:
    # Half-precision logits are computed in float32; float64 stays float64.
    return jnp.promote_types(dtype, jnp.float32)


# ------------------------------------------------------------------------------------------------
# Multi-label ASL: forward terms and hand-written gradient


class _Config(NamedTuple):
    """Everything static about one ASL variant; the key of the custom-VJP cache."""

    gamma_pos: float | None  # None: traced, read from the argument
    gamma_neg: float | None
    clip: float
    detach_focal_weight: bool


def _power(base, log_base, gamma, static_gamma: float | None):
    """base ** gamma for base in [0, 1] with 0 ** 0 = 1 and no NaN anywhere.

    An integer-valued static exponent becomes repeated multiplication (`lax.integer_pow`), about
    three times cheaper than `pow` on CPU. Otherwise the power is exp(γ · log base) from a finite
    log: every caller passes a finite `log_base`, so the result and its derivatives stay finite
    even where base underflows to 0, and γ = 0 gives exactly 1.
    """
    if static_gamma is not None and float(static_gamma).is_integer():
        return jax.lax.integer_pow(base, int(static_gamma))
    exponent = static_gamma if static_gamma is not None else gamma
    return jnp.exp(exponent * log_base)


def _ratio_log_one_minus(shifted_prob, log_one_minus):
    """-log(1 - x) / x for x in [0, 1), the same as 1 + x/2 + x²/3 + ... near 0."""
    small = shifted_prob < _SERIES_SWITCH
    x = shifted_prob
    num_terms = _SERIES_TERMS[np.dtype(x.dtype)]
    series = jnp.full_like(x, 1.0 / num_terms)
    for k in range(num_terms - 1, 0, -1):  # Horner: 1/1 + x(1/2 + x(1/3 + ...))
        series = 1.0 / k + x * series
    # The double `where` keeps the unused branch free of 0/0, so second derivatives stay finite.
    safe_x = jnp.where(small, 1.0, x)
    return jnp.where(small, series, -log_one_minus / safe_x)


class _Parts(NamedTuple):
    """Per-element pieces of ASL shared by the loss value and its gradient."""

    p: jax.Array  # σ(z)
    q: jax.Array  # σ(−z) = 1 − p
    log_p: jax.Array
    log_q: jax.Array
    weight_pos: jax.Array  # (1 − p)^γ+
    loss_pos: jax.Array  # L+
    shifted: jax.Array  # p_m = max(p − m, 0)
    one_minus_shifted: jax.Array  # 1 − p_m
    log_one_minus_shifted: jax.Array  # log(1 − p_m), exactly 0 where p ≤ m
    weight_neg: jax.Array  # p_m^γ− (for fractional γ−, ≈ 0 rather than 0 where p ≤ m)
    loss_neg: jax.Array  # L−


def _asl_parts(z, gamma_pos, gamma_neg, cfg: _Config) -> _Parts:
    """L+, L− and the pieces the gradient reuses, without a select or comparison.

    No `where` here on purpose: on XLA:CPU the sum of the loss runs in a YNNPACK fusion that
    takes arithmetic, `exp`, `log`, `sign`, `min` and `max`, but not selects or comparisons; with
    one, the terms before it are first written to memory as B×K arrays. Without, the value of the
    loss is a single pass over the logits and labels, with no B×K temporary.
    """
    # One exp gives p, q = 1 - p, log p and log q to full relative precision, with no overflow:
    # e = exp(-|z|) in [0, 1], 1/(1 + e) is the larger of p and q and e/(1 + e) the smaller one.
    e = jnp.exp(-jnp.abs(z))
    inv = 1.0 / (1.0 + e)
    # Which is which without a select: h = 1 for z > 0, 0 for z < 0 and 1/2 at z = 0 (where
    # p = q = inv = 1/2), so the blends below pick exactly inv or e·inv.
    h = 0.5 + 0.5 * jnp.sign(z)
    p = inv * (h + (1.0 - h) * e)
    q = inv * ((1.0 - h) + h * e)
    log1p_e = jnp.log1p(e)
    log_p = jnp.minimum(z, 0.0) - log1p_e
    log_q = jnp.minimum(-z, 0.0) - log1p_e

    # Positive part: L+ = -(1 - p)^γ+ log p.
    weight_pos = _power(q, log_q, gamma_pos, cfg.gamma_pos)
    loss_pos = -weight_pos * log_p

    # Negative part: L− = -p_m^γ− log(1 - p_m), with p_m = max(p - m, 0).
    m = cfg.clip
    if m == 0.0:
        # p_m = p and 1 - p_m = q: both logs are already at hand, the term is active everywhere.
        shifted, one_minus_shifted, log_one_minus = p, q, log_q
        weight_neg = _power(p, log_p, gamma_neg, cfg.gamma_neg)
    else:
        shifted = jnp.maximum(p - m, 0.0)
        # 1 - p_m = min(q + m, 1): from q directly, so it keeps its precision as p -> 1, and its
        # log is exactly 0 where the term is inactive.
        one_minus_shifted = jnp.minimum(q + m, 1.0)
        log_one_minus = jnp.log(one_minus_shifted)
        # A finite log for the exp-log power: where p_m = 0 the weight becomes tiny^γ (or 1 for
        # γ = 0), multiplied by log(1 - p_m) = 0. The gradient masks it exactly.
        log_shifted = jnp.log(jnp.maximum(shifted, jnp.finfo(z.dtype).tiny))
        weight_neg = _power(shifted, log_shifted, gamma_neg, cfg.gamma_neg)
    loss_neg = -weight_neg * log_one_minus
    return _Parts(
        p=p,
        q=q,
        log_p=log_p,
        log_q=log_q,
        weight_pos=weight_pos,
        loss_pos=loss_pos,
        shifted=shifted,
        one_minus_shifted=one_minus_shifted,
        log_one_minus_shifted=log_one_minus,
        weight_neg=weight_neg,
        loss_neg=loss_neg,
    )


def _asl_value(z, y, gamma_pos, gamma_neg, cfg: _Config):
    t = _asl_parts(z, gamma_pos, gamma_neg, cfg)
    return y * t.loss_pos + (1.0 - y) * t.loss_neg


def _asl_grads(z, y, gamma_pos, gamma_neg, cfg: _Config):
    """dloss/dz and dloss/dy element-wise, for loss = y·L+ + (1 − y)·L−.

    With p = σ(z), q = 1 − p and p_m = max(p − m, 0) (the formulas of `asymmetric_loss`):

      dL+/dz = (1 − p)^γ+ · (γ+ · p · log p − q),
      dL−/dz = p·q · p_m^γ− · (1/(1 − p_m) − γ− · log(1 − p_m)/p_m) where p > m, 0 elsewhere,
      dloss/dy = L+ − L−.

    With detached focusing weights (or γ = 0) the γ·log terms vanish: dL+/dz = −(1 − p)^γ+ · q and
    dL−/dz = p·q · p_m^γ− / (1 − p_m). Below p_m = 0.05 the quotient −log(1 − p_m)/p_m is
    evaluated from its Taylor series (`_ratio_log_one_minus`). For m = 0 (p_m = p, 1 − p_m = q)
    dL−/dz simplifies to p^γ− · (p − γ− · q · log q), with no division.
    """
    t = _asl_parts(z, gamma_pos, gamma_neg, cfg)
    p, q = t.p, t.q
    if cfg.detach_focal_weight or cfg.gamma_pos == 0:
        grad_pos = -t.weight_pos * q
    else:
        gp = cfg.gamma_pos if cfg.gamma_pos is not None else gamma_pos
        grad_pos = t.weight_pos * (gp * p * t.log_p - q)

    gn = cfg.gamma_neg if cfg.gamma_neg is not None else gamma_neg
    if cfg.clip == 0.0:
        # p·q·p^γ · (1/q + γ·(-log q)/p) simplifies to p^γ · (p - γ·q·log q): no division needed.
        if cfg.detach_focal_weight or cfg.gamma_neg == 0:
            grad_neg = t.weight_neg * p
        else:
            grad_neg = t.weight_neg * (p - gn * q * t.log_q)
    else:
        active = t.shifted > 0
        common = jnp.where(active, p * q * t.weight_neg, 0.0)
        if cfg.detach_focal_weight or cfg.gamma_neg == 0:
            grad_neg = common / t.one_minus_shifted
        else:
            ratio = _ratio_log_one_minus(t.shifted, t.log_one_minus_shifted)
            grad_neg = common * (1.0 / t.one_minus_shifted + gn * ratio)
    grad_logits = y * grad_pos + (1.0 - y) * grad_neg
    # Soft labels enter linearly: dL/dy = L+ − L−. Unused (and removed by XLA) for hard labels.
    grad_labels = t.loss_pos - t.loss_neg
    return grad_logits, grad_labels


@functools.cache
def _asl_with_vjp(cfg: _Config):
    """Builds (once per static configuration) the custom-VJP ASL for logits, labels and γs."""

    @jax.custom_vjp
    def asl(logits, labels, gamma_pos, gamma_neg):
        return _asl_value(logits, labels, gamma_pos, gamma_neg, cfg)

    def fwd(logits, labels, gamma_pos, gamma_neg):
        # Only the inputs are kept: the backward pass recomputes its few intermediates, which costs
        # less than storing several B×K arrays between the passes.
        return asl(logits, labels, gamma_pos, gamma_neg), (logits, labels, gamma_pos, gamma_neg)

    def bwd(residuals, cotangent):
        logits, labels, gamma_pos, gamma_neg = residuals
        # The gradient is computed apart from the loss value: without the barrier XLA merges the
        # intermediates the two have in common (even their broadcast constants), and writes every
        # merged one to memory as a B×K array between two fusions; on XLA:CPU that makes the
        # value-and-grad 2-3x slower, with six B×K temporaries.
        # The leading unit axis, a free reshape on every backend, gives the gradient's constants
        # another shape, so that they are not merged either. Recomputing costs one more pass over
        # the inputs, much less than the temporaries did.
        z, y = jax.lax.optimization_barrier((logits[None], labels[None]))
        grad_logits, grad_labels = _asl_grads(z, y, gamma_pos, gamma_neg, cfg)
        grad_logits = grad_logits.reshape(logits.shape)
        grad_labels = grad_labels.reshape(labels.shape)
        # The focusing parameters are hyper-parameters: by design they receive no gradient.
        return (
            cotangent * grad_logits,
            cotangent * grad_labels,
            jnp.zeros_like(gamma_pos),
            jnp.zeros_like(gamma_neg),
        )

    asl.defvjp(fwd, bwd)
    return asl


def asymmetric_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma_pos: float | ArrayLike = 0.0,
    gamma_neg: float | ArrayLike = 4.0,
    clip: float = 0.05,
    detach_focal_weight: bool = False,
) -> jax.Array:
    r"""Element-wise Asymmetric Loss (ASL) for multi-label classification.

    With :math:`p = \sigma(z)` and the shifted probability :math:`p_m = \max(p - m, 0)`,

    .. math::
        \ell(z, y) = -y\,(1-p)^{\gamma_+}\log p
                     \;-\; (1-y)\,p_m^{\gamma_-}\log(1-p_m).

    Positives are focused with :math:`\gamma_+`, negatives with :math:`\gamma_-` and additionally
    shifted by the margin :math:`m` (``clip``): a negative whose probability is already below
    :math:`m` contributes nothing, and a very confident "negative" (:math:`p \to 1`, often a missing
    label) receives a gradient that falls back towards zero. Note that
    :math:`1 - p_m = \min(1 - p + m, 1)`, so this is exactly the "asymmetric clipping"
    ``(1 - p + m).clamp(max=1)`` of the official PyTorch code, written differently.

    Special cases: ``gamma_pos = gamma_neg = clip = 0`` is binary cross-entropy
    (`optax.sigmoid_binary_cross_entropy`), ``gamma_pos = gamma_neg = γ, clip = 0`` is focal loss
    without α (`optax.sigmoid_focal_loss`).

    **Gradient.** The gradient is hand-written (`jax.custom_vjp`) and computed in log space. By
    default it is the gradient of the formula above (the paper's analysis):

    .. math::
        \partial_z L_+ = (1-p)^{\gamma_+}(\gamma_+\, p \log p - (1-p)), \qquad
        \partial_z L_- = p(1-p)\, p_m^{\gamma_-}\Big(\frac{1}{1-p_m}
                         - \gamma_-\frac{\log(1-p_m)}{p_m}\Big)\ [p > m].

    With ``detach_focal_weight=True`` the focusing weights :math:`(1-p)^{\gamma_+}` and
    :math:`p_m^{\gamma_-}` are treated as constants (what ``disable_torch_grad_focal_loss`` does in
    the official training script): :math:`\partial_z L_+ = -(1-p)^{\gamma_+ + 1}` and
    :math:`\partial_z L_- = p(1-p)\,p_m^{\gamma_-}/(1-p_m)`. The loss value is the same.

    The loss and its gradient are finite for every finite logit (tested from -1e4 to 1e4 in float32
    and bfloat16) and every γ ≥ 0 including fractional ones, where naive ``pow`` code returns NaN
    gradients at p = 0 or p = m. Half-precision logits are computed in float32; the loss is
    returned in float32 (float64 for float64 logits) and the gradient in the logits' dtype.
    Reverse mode only: ``grad`` and ``grad`` of ``grad`` work, forward mode (``jvp``, ``jacfwd``,
    ``hessian``) does not, as for every `jax.custom_vjp` function.

    Defaults are the paper's MS-COCO setting (γ+ = 0, γ− = 4, m = 0.05).

    Args:
      logits: floating-point array of logits, any shape, e.g. ``[batch, num_classes]``.
      labels: array of the same shape with targets in [0, 1] (hard or soft); cast to the compute
        dtype. For labels with unknown entries see `partial_labels`.
      gamma_pos: focusing parameter γ+ ≥ 0 of the positives. A Python number (static; integer
        values use integer powers, the fastest path) or an array broadcastable to ``logits``, e.g.
        a traced scalar under ``jit``. It receives no gradient.
      gamma_neg: focusing parameter γ− ≥ 0 of the negatives, as ``gamma_pos``. The adaptive γ− of
        `asl_jax.update_gamma_neg` arrives here as a traced scalar.
      clip: probability margin m in [0, 1) applied to negatives (static). 0 disables shifting.
      detach_focal_weight: whether the focusing weights are excluded from the gradient (static).

    Returns:
      The element-wise loss, same shape as ``logits``; reduce it with `reduce_loss` (the official
      code sums it over the batch).

    Examples:
      >>> import jax.numpy as jnp
      >>> from asl_jax import asymmetric_loss
      >>> logits = jnp.array([[2.0, -1.0, 0.5]])
      >>> labels = jnp.array([[1.0, 0.0, 0.0]])
      >>> print(asymmetric_loss(logits, labels).round(4))
      [[0.1269 0.0006 0.0913]]

    References:
      Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021,
      https://arxiv.org/abs/2009.14119
    """
    _check_logits_and_labels(logits, labels)
    clip = _check_clip(clip)
    if not isinstance(detach_focal_weight, bool):
        raise TypeError(
            "detach_focal_weight must be a Python bool (it is static), "
            f"got {detach_focal_weight!r}."
        )
    _check_gamma("gamma_pos", gamma_pos)
    _check_gamma("gamma_neg", gamma_neg)

    dtype = _compute_dtype(logits.dtype)
    logits = jnp.asarray(logits).astype(dtype)
    labels = jnp.asarray(labels).astype(dtype)
    static_pos = float(gamma_pos) if _is_static_number(gamma_pos) else None
    static_neg = float(gamma_neg) if _is_static_number(gamma_neg) else None
    for name, gamma in (("gamma_pos", gamma_pos), ("gamma_neg", gamma_neg)):
        if not _is_static_number(gamma):
            try:
                jnp.broadcast_shapes(jnp.shape(gamma), logits.shape)
            except ValueError:
                raise ValueError(
                    f"{name} must be a scalar or broadcastable to the logits' shape "
                    f"{logits.shape}, got shape {jnp.shape(gamma)}."
                ) from None
    gamma_pos_arr = jax.lax.stop_gradient(
        jnp.asarray(0.0 if static_pos is not None else gamma_pos, dtype)
    )
    gamma_neg_arr = jax.lax.stop_gradient(
        jnp.asarray(0.0 if static_neg is not None else gamma_neg, dtype)
    )
    cfg = _Config(static_pos, static_neg, clip, detach_focal_weight)
    return _asl_with_vjp(cfg)(logits, labels, gamma_pos_arr, gamma_neg_arr)


# ------------------------------------------------------------------------------------------------
# Single-label (softmax) ASL


def asymmetric_loss_single_label(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma_pos: float | ArrayLike = 0.0,
    gamma_neg: float | ArrayLike = 4.0,
    label_smoothing: float = 0.1,
) -> jax.Array:
    r"""Asymmetric Loss for single-label (softmax) classification, one value per example.

    With :math:`\log p = \mathrm{log\_softmax}(z)`, smoothed targets
    :math:`t_k = (1-\varepsilon)[k = y] + \varepsilon / K` and the weights
    :math:`w_y = (1 - p_y)^{\gamma_+}` on the target class and :math:`w_k = p_k^{\gamma_-}` on the
    others,

    .. math::
        \ell(z, y) = -\sum_k t_k\, w_k \log p_k .

    This is the softmax variant of the official implementation. Without label smoothing
    (``label_smoothing=0``) every non-target class has :math:`t_k = 0`, so **γ− has no effect**;
    it acts only through the smoothing mass spread over the non-target classes. The weights are
    computed in log space (:math:`\log(1-p_y)` from a log-sum-exp over the other classes), so the
    loss and its gradient (JAX autodiff) stay finite for extreme logits and fractional γ.

    Args:
      logits: floating-point array ``[..., num_classes]`` with ``num_classes >= 2``.
      labels: integer class ids of shape ``logits.shape[:-1]``.
      gamma_pos: focusing parameter of the target class (number or traced array, no gradient).
      gamma_neg: focusing parameter of the other classes (number or traced array, no gradient).
      label_smoothing: ε in [0, 1).

    Returns:
      The loss per example, shape ``logits.shape[:-1]``, float32 or wider.

    Examples:
      >>> import jax.numpy as jnp
      >>> from asl_jax import asymmetric_loss_single_label
      >>> logits = jnp.array([[2.0, 0.0, -1.0]])
      >>> print(asymmetric_loss_single_label(logits, jnp.array([0])).round(4))
      [0.1585]

    References:
      Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021,
      https://arxiv.org/abs/2009.14119
    """
    if not hasattr(logits, "shape") or len(logits.shape) < 1:
        raise ValueError("logits must be an array of shape [..., num_classes].")
    _check_logits_and_labels(logits, labels, labels_shape=tuple(logits.shape[:-1]))
    num_classes = logits.shape[-1]
    if num_classes < 2:
        raise ValueError(
            f"logits must have at least 2 classes on the last axis, got {num_classes}."
        )
    if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
        raise TypeError(f"labels must be integer class ids, got dtype {jnp.asarray(labels).dtype}.")
    if not isinstance(label_smoothing, numbers.Real) or not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be a number in [0, 1), got {label_smoothing!r}.")
    _check_gamma("gamma_pos", gamma_pos)
    _check_gamma("gamma_neg", gamma_neg)
    if not isinstance(labels, jax.core.Tracer):
        concrete = np.asarray(labels)
        if concrete.size and (concrete.min() < 0 or concrete.max() >= num_classes):
            raise ValueError(
                f"labels must be class ids in [0, {num_classes}), got values from "
                f"{concrete.min()} to {concrete.max()}."
            )

    dtype = _compute_dtype(logits.dtype)
    z = jnp.asarray(logits).astype(dtype)
    gamma_pos = jax.lax.stop_gradient(jnp.asarray(gamma_pos, dtype))
    gamma_neg = jax.lax.stop_gradient(jnp.asarray(gamma_neg, dtype))
    is_target = jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_)
    log_normalizer = jax.nn.logsumexp(z, axis=-1, keepdims=True)
    log_p = z - log_normalizer
    # log(1 - p_y) = logsumexp over the other classes − logsumexp over all: exact even when
    # p_y rounds to 1, where log1p(-p_y) would be -inf.
    log_rest = jax.nn.logsumexp(jnp.where(is_target, -jnp.inf, z), axis=-1, keepdims=True)
    log_one_minus_target = log_rest - log_normalizer
    log_base = jnp.where(is_target, log_one_minus_target, log_p)
    gamma = jnp.where(is_target, gamma_pos, gamma_neg)
    weight = jnp.exp(gamma * log_base)
    targets = jnp.where(is_target, 1.0 - label_smoothing, 0.0) + label_smoothing / num_classes
    return -jnp.sum(targets * weight * log_p, axis=-1)


# ------------------------------------------------------------------------------------------------
# Reductions and partial labels


def reduce_loss(
    loss: ArrayLike,
    reduction: Reduction = "sum",
    *,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Reduces an element-wise loss ``[batch, ...]`` to a scalar, optionally under a mask.

    - ``"sum"``: the sum of all elements (the official ASL code).
    - ``"batchmean"``: the sum divided by the number of examples (rows). Under a mask, rows with
      no unmasked element (e.g. the padding of a last batch) are not counted.
    - ``"mean"``: the mean over (unmasked) elements.

    Masked elements contribute exactly zero to the value and receive exactly zero gradient, even if
    their loss is not finite. A fully masked input reduces to 0.

    Args:
      loss: element-wise loss with the batch on axis 0 (e.g. from `asymmetric_loss`).
      reduction: ``"sum"``, ``"batchmean"`` or ``"mean"``.
      where: optional boolean mask broadcastable to ``loss``; True marks elements that count.

    Returns:
      A scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> from asl_jax import reduce_loss
      >>> loss = jnp.array([[1.0, 2.0], [3.0, 4.0]])
      >>> print(reduce_loss(loss, "batchmean", where=jnp.array([[True, True], [False, False]])))
      3.0
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}.")
    loss = jnp.asarray(loss)
    if loss.ndim == 0 and reduction == "batchmean":
        raise ValueError("reduction 'batchmean' needs a loss with a batch axis, got a scalar.")
    if where is None:
        total = jnp.sum(loss)
        if reduction == "sum":
            return total
        count = loss.shape[0] if reduction == "batchmean" else loss.size
        return total / max(count, 1)
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"where must be a boolean mask, got dtype {where.dtype}.")
    try:
        where = jnp.broadcast_to(where, loss.shape)
    except ValueError:
        raise ValueError(
            f"where must be broadcastable to the loss' shape {loss.shape}, got {where.shape}."
        ) from None
    total = jnp.sum(jnp.where(where, loss, 0.0))
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        count = jnp.sum(jnp.any(where.reshape(where.shape[0], -1), axis=1))
    else:
        count = jnp.sum(where)
    return total / jnp.maximum(count, 1).astype(total.dtype)


def known_labels_mask(labels: ArrayLike) -> np.ndarray | jax.Array:
    """Where a label is known: the one definition of the partial-label convention.

    Labels are written ``{1, 0, -1}``: 1 positive, 0 negative, **-1 unknown** (any negative
    value counts as unknown). Everything else is known, NaN included: a NaN label is corrupt
    data, not a missing label, and is left to show (a non-finite loss, a metric's error) rather
    than silently masked.

    Works on NumPy arrays (a NumPy result, no device transfer) and on JAX arrays, also under
    ``jit`` (a JAX result).

    Args:
      labels: labels of any shape and real or bool dtype.

    Returns:
      A boolean array of the labels' shape: True where the label is known (not negative).

    Examples:
      >>> import numpy as np
      >>> from asl_jax import known_labels_mask
      >>> known_labels_mask(np.array([1.0, 0.0, -1.0, 0.7]))
      array([ True,  True, False,  True])
    """
    if not isinstance(labels, np.ndarray | jax.Array):
        labels = np.asarray(labels)
    return ~(labels < 0)


def partial_labels(labels: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Splits labels written ``{1, 0, -1}`` (−1 = unknown) into targets and a mask.

    Unknown entries become target 0 with mask False; pass the mask to `reduce_loss` (or
    `asl_jax.probability_stats`) so that they contribute no loss and no gradient.

    Args:
      labels: array with entries 1 (positive), 0 (negative) or −1 (unknown). Any negative value
        counts as unknown (see `known_labels_mask`); a NaN label is kept (target NaN, known).

    Returns:
      ``(targets, mask)``: targets in {0, 1} with the labels' dtype, boolean mask of known entries.

    Examples:
      >>> import jax.numpy as jnp
      >>> from asl_jax import partial_labels
      >>> targets, mask = partial_labels(jnp.array([1, 0, -1]))
      >>> print(targets, mask)
      [1 0 0] [ True  True False]
    """
    labels = jnp.asarray(labels)
    known = known_labels_mask(labels)
    return jnp.where(known, labels, jnp.zeros_like(labels)), known
