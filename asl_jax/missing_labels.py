"""Losses for multi-label data with missing labels: focal margin, Hill and SPLC.

An unlabelled positive looks like a negative to the loss. ASL answers with a probability margin
on the negatives; Zhang et al. (2021) answer with two simple losses, both element-wise like
`asl_jax.asymmetric_loss`:

- **focal margin** loss: focal loss whose positives see the logit shifted by a margin
  :math:`m` (positives keep being pushed until they are confident by :math:`m`);
- **Hill** loss: the focal margin positives, and negatives weighted by :math:`(\\lambda - p)`, a
  hill-shaped loss in :math:`p` that gives little to very confident "negatives" (probably
  missing labels);
- **SPLC** (self-paced loss correction): the focal margin loss, where after a warm-up a negative
  whose probability exceeds :math:`\\tau` is taken as a positive for that step
  (:func:`splc_labels`).

Numerics: every probability and logarithm comes from ``softplus`` of the logit
(:math:`\\log\\sigma(x) = -\\mathrm{softplus}(-x)`), so the loss and its automatic gradient are
finite for every finite logit and every γ ≥ 0, in float32 and for bfloat16/float16 logits (which
are computed in float32, like ASL's). Powers of probabilities are ``exp(γ · log p)`` of a finite
log, so fractional γ has no NaN gradient at :math:`p \\to 0`.

Reference:
  Zhang, Cheng, Huang, Wen, Feng, Li, Guo, "Simple and Robust Loss Design for Multi-Label
  Learning with Missing Labels", 2021, https://arxiv.org/abs/2112.07368
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from asl_jax.losses import _check_gamma, _check_logits_and_labels, _compute_dtype

__all__ = ["focal_margin_loss", "hill_loss", "splc_labels"]


def _check_finite_number(name: str, value, *, low: float = -jnp.inf, high: float = jnp.inf):
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a Python number (it is static), got {value!r}.")
    if not (low <= value <= high) or value != value:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}.")


def _prepare(logits: ArrayLike, labels: ArrayLike) -> tuple[jax.Array, jax.Array]:
    _check_logits_and_labels(logits, labels)
    dtype = _compute_dtype(logits.dtype)
    return jnp.asarray(logits).astype(dtype), jnp.asarray(labels).astype(dtype)


def _positive_term(z: jax.Array, margin: float, gamma: float) -> jax.Array:
    """:math:`-(1 - \\sigma(z - m))^{\\gamma} \\log \\sigma(z - m)` from softplus, finite."""
    shifted = z - margin
    log_p = -jax.nn.softplus(-shifted)  # log σ(z − m)
    log_q = -jax.nn.softplus(shifted)  # log (1 − σ(z − m))
    return -jnp.exp(gamma * log_q) * log_p


def _focal_negative_term(z: jax.Array, gamma: float) -> jax.Array:
    """:math:`-\\sigma(z)^{\\gamma} \\log(1 - \\sigma(z))` from softplus, finite."""
    return jnp.exp(-gamma * jax.nn.softplus(-z)) * jax.nn.softplus(z)


def focal_margin_loss(
    logits: ArrayLike, labels: ArrayLike, *, margin: float = 1.0, gamma: float = 2.0
) -> jax.Array:
    r"""Element-wise focal margin loss (focal loss with a logit margin on the positives).

    With :math:`p = \sigma(z)` and :math:`p_m = \sigma(z - m)`,

    .. math::
        \ell(z, y) = -y\,(1-p_m)^{\gamma}\log p_m \;-\; (1-y)\,p^{\gamma}\log(1-p).

    ``margin = 0`` is focal loss without α; ``margin = gamma = 0`` is binary cross-entropy.

    Args:
      logits: floating-point logits, any shape.
      labels: targets in [0, 1] of the same shape (hard or soft; for unknown entries use
        `asl_jax.partial_labels`).
      margin: logit margin m of the positives (static; the paper's default 1).
      gamma: focusing parameter γ ≥ 0 of both terms (static; the paper's default 2).

    Returns:
      The element-wise loss (float32, float64 for float64 logits), same shape as ``logits``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from asl_jax import focal_margin_loss
      >>> print(focal_margin_loss(jnp.array([[2.5, 0.0]]), jnp.array([[1.0, 0.0]])).round(4))
      [[0.0067 0.1733]]

    References:
      Zhang et al., "Simple and Robust Loss Design for Multi-Label Learning with Missing Labels",
      https://arxiv.org/abs/2112.07368
    """
    _check_finite_number("margin", margin)
    _check_gamma("gamma", gamma)
    z, y = _prepare(logits, labels)
    return y * _positive_term(z, margin, gamma) + (1 - y) * _focal_negative_term(z, gamma)


def hill_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    margin: float = 1.0,
    gamma: float = 2.0,
    hill_lambda: float = 1.5,
) -> jax.Array:
    r"""Element-wise Hill loss: focal margin positives, hill-shaped negatives.

    With :math:`p = \sigma(z)` and :math:`p_m = \sigma(z - m)`,

    .. math::
        \ell(z, y) = -y\,(1-p_m)^{\gamma}\log p_m \;+\; (1-y)\,(\lambda - p)\,p^2.

    The negative term rises with :math:`p`, peaks and falls for :math:`\lambda < 2`: a
    confident negative (probably an unlabelled positive) is pushed less than a hesitant one. Its
    gradient :math:`p(1-p)(2\lambda p - 3p^2)` vanishes at :math:`p = 2\lambda/3` (1 for the
    default λ = 1.5).

    Args:
      logits: floating-point logits, any shape.
      labels: targets in [0, 1] of the same shape.
      margin: logit margin m of the positives (static; default 1).
      gamma: focusing parameter γ ≥ 0 of the positives (static; default 2).
      hill_lambda: λ of the negatives' weight (static; the paper's 1.5).

    Returns:
      The element-wise loss, same shape as ``logits``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from asl_jax import hill_loss
      >>> print(hill_loss(jnp.array([[2.5, 0.0]]), jnp.array([[1.0, 0.0]])).round(4))
      [[0.0067 0.25  ]]

    References:
      Zhang et al., "Simple and Robust Loss Design for Multi-Label Learning with Missing Labels",
      https://arxiv.org/abs/2112.07368
    """
    _check_finite_number("margin", margin)
    _check_gamma("gamma", gamma)
    _check_finite_number("hill_lambda", hill_lambda, low=0.0)
    z, y = _prepare(logits, labels)
    p = jax.nn.sigmoid(z)
    negative = (hill_lambda - p) * p * p
    return y * _positive_term(z, margin, gamma) + (1 - y) * negative


def splc_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    tau: float = 0.6,
    active: bool | ArrayLike = True,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""SPLC's label correction: a negative with :math:`\sigma(z) > \tau` becomes a positive.

    .. math::
        \tilde y = \begin{cases} 1 & y = 0,\ \sigma(z) > \tau,\ \text{active} \\
                                 y & \text{otherwise} \end{cases}

    A pure function of the logits, the labels, τ and whether the correction is active (the
    training step passes ``active = step >= warm-up steps``: the paper starts after one epoch,
    when the model recalls missing labels with high precision). The corrected labels carry no
    gradient. Unknown entries (``where`` False) are left as they are.

    Args:
      logits: floating-point logits.
      labels: {0, 1} labels of the same shape.
      tau: the probability above which a negative is taken as a missing positive (static, in
        [0, 1]; the paper's 0.6).
      active: a Python bool or a traced boolean scalar.
      where: optional mask of the entries that may be corrected (the known ones).

    Returns:
      The corrected labels, in the compute dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> from asl_jax import splc_labels
      >>> print(splc_labels(jnp.array([[2.0, 0.0, 3.0]]), jnp.array([[0.0, 0.0, 1.0]])))
      [[1. 0. 1.]]
    """
    _check_finite_number("tau", tau, low=0.0, high=1.0)
    z, y = _prepare(logits, labels)
    confident = jax.lax.stop_gradient(jax.nn.sigmoid(z)) > tau
    corrected = (y == 0) & confident & jnp.asarray(active, bool)
    if where is not None:
        corrected = corrected & jnp.asarray(where, bool)
    return jnp.where(corrected, jnp.ones_like(y), y)
