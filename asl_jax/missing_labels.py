"""Losses for multi-label data with missing labels, as published after ASL.

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

From Cole et al. (2021), for images with one known positive (every other label unknown and
assumed negative): :func:`assume_negative_loss` (binary cross-entropy with the unknown labels
taken as negatives, optionally down-weighted: "weak assume negative", or label-smoothed). From
Kim et al. (2022): :func:`large_loss_weights`, which rejects the assumed negatives with the
largest loss (probably positives), at a rate that grows with the epoch. From Ben-Baruch et al.
(2022), for labels ``{1, 0, -1}``: :func:`selective_loss`, which ignores an unknown entry when
its class is frequent (:func:`update_class_prior`) or the model finds it likely, and otherwise
takes it as a negative with a focusing parameter of its own.

Numerics: every probability and logarithm comes from ``softplus`` of the logit
(:math:`\\log\\sigma(x) = -\\mathrm{softplus}(-x)`), so the loss and its automatic gradient are
finite for every finite logit and every γ ≥ 0, in float32 and for bfloat16/float16 logits (which
are computed in float32, like ASL's). Powers of probabilities are ``exp(γ · log p)`` of a finite
log, so fractional γ has no NaN gradient at :math:`p \\to 0`.

References:
  Zhang, Cheng, Huang, Wen, Feng, Li, Guo, "Simple and Robust Loss Design for Multi-Label
  Learning with Missing Labels", 2021, https://arxiv.org/abs/2112.07368

  Cole, Mac Aodha, Lorieul, Perona, Morris, Jojic, "Multi-Label Learning from Single Positive
  Labels", CVPR 2021, https://arxiv.org/abs/2106.09708

  Kim, Kim, Lee, Cho, Hwang, "Large Loss Matters in Weakly Supervised Multi-Label
  Classification", CVPR 2022, https://arxiv.org/abs/2206.03740

  Ben-Baruch, Ridnik, Friedman, Ben-Cohen, Zamir, Noy, Zelnik-Manor, "Multi-label Classification
  with Partial Annotations using Class-aware Selective Loss", CVPR 2022,
  https://arxiv.org/abs/2110.10955
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from asl_jax.losses import (
    _check_gamma,
    _check_logits_and_labels,
    _compute_dtype,
    asymmetric_loss,
    known_labels_mask,
)

__all__ = [
    "assume_negative_loss",
    "focal_margin_loss",
    "hill_loss",
    "large_loss_weights",
    "selective_loss",
    "splc_labels",
    "update_class_prior",
]


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


def assume_negative_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    negative_weight: float = 1.0,
    label_smoothing: float = 0.0,
) -> jax.Array:
    r"""Element-wise binary cross-entropy with unknown labels assumed negative (Cole et al.).

    With :math:`p = \sigma(z)`, the smoothed target :math:`t = (1 - \epsilon)\,y + \epsilon/2`
    and the weight :math:`w = 1` for a positive, :math:`w = w_-` otherwise,

    .. math::
        \ell(z, y) = -w\,\bigl(t\log p + (1 - t)\log(1 - p)\bigr).

    Unknown entries (−1) count as negatives, which is the point of the method: "assume negative"
    (AN) is ``negative_weight = 1``, "weak assume negative" (WAN) down-weights every negative,
    the paper with :math:`w_- = 1/(K - 1)` for K classes, and AN with label smoothing (AN-LS)
    uses :math:`\epsilon = 0.1`.

    Args:
      logits: floating-point logits, any shape.
      labels: labels of the same shape: 1 positive; 0, or −1 for unknown, are negatives.
      negative_weight: :math:`w_- \ge 0` (static).
      label_smoothing: :math:`\epsilon \in [0, 1]` (static).

    Returns:
      The element-wise loss, same shape as ``logits``.

    Example:
      >>> import jax.numpy as jnp
      >>> from asl_jax import assume_negative_loss
      >>> z, y = jnp.array([[2.0, 0.0, 1.0]]), jnp.array([[1.0, -1.0, 0.0]])
      >>> print(assume_negative_loss(z, y, negative_weight=0.5).round(4))
      [[0.1269 0.3466 0.6566]]

    References:
      Cole et al., "Multi-Label Learning from Single Positive Labels", CVPR 2021,
      https://arxiv.org/abs/2106.09708
    """
    _check_finite_number("negative_weight", negative_weight, low=0.0)
    _check_finite_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    z, y = _prepare(logits, labels)
    positive = (y > 0).astype(z.dtype)  # unknown (-1) and 0 are both negatives
    target = (1.0 - label_smoothing) * positive + 0.5 * label_smoothing
    # -t log p - (1 - t) log(1 - p) = t softplus(-z) + (1 - t) softplus(z): finite everywhere.
    value = target * jax.nn.softplus(-z) + (1.0 - target) * jax.nn.softplus(z)
    return value * (positive + negative_weight * (1.0 - positive))


def large_loss_weights(
    losses: ArrayLike,
    labels: ArrayLike,
    *,
    rejection_rate: float | ArrayLike,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Large-loss rejection (Kim et al., LL-R): weight 0 for the largest unobserved losses.

    Of the batch's ``N`` entries (all images and classes), the
    :math:`k = \lceil \text{rejection\_rate} \cdot N \rceil` unobserved ones (label not 1)
    with the largest loss get weight 0 and the rest weight 1: an assumed negative that the model
    finds very likely is probably a missing positive, and learning it as a negative is what hurts.
    The paper raises the rate by Δ_rel per epoch after the first (:math:`\text{rate} =
    \Delta_{rel}\cdot\lfloor\text{epoch}\rfloor`), which the training step passes.

    Args:
      losses: element-wise losses ``[B, K]`` (their values are read without gradient).
      labels: labels of the same shape; 1 = observed positive, anything else unobserved.
      rejection_rate: the fraction of all entries to reject, in [0, 1] (a float or a traced
        scalar).
      where: optional mask of the entries that may be rejected (False: padding rows).

    Returns:
      float32 weights in {0, 1} of the losses' shape, without gradient.

    Example:
      >>> import jax.numpy as jnp
      >>> from asl_jax import large_loss_weights
      >>> losses = jnp.array([[0.1, 3.0, 0.2, 5.0]])
      >>> print(large_loss_weights(losses, jnp.array([[0.0, 0.0, 0.0, 1.0]]), rejection_rate=0.25))
      [[1. 0. 1. 1.]]

    References:
      Kim et al., "Large Loss Matters in Weakly Supervised Multi-Label Classification",
      CVPR 2022, https://arxiv.org/abs/2206.03740
    """
    losses = jax.lax.stop_gradient(jnp.asarray(losses, jnp.float32))
    labels = jnp.asarray(labels)
    if labels.shape != losses.shape:
        raise ValueError(f"labels {labels.shape} must have the losses' shape {losses.shape}.")
    candidate = labels != 1
    if where is not None:
        candidate = candidate & jnp.broadcast_to(jnp.asarray(where, bool), losses.shape)
    ranked = jnp.where(candidate, losses, -jnp.inf).ravel()
    count = jnp.ceil(jnp.asarray(rejection_rate, jnp.float32) * ranked.size).astype(jnp.int32)
    count = jnp.clip(count, 0, ranked.size)
    # The k-th largest candidate loss is the threshold; k = 0 rejects nothing.
    descending = -jnp.sort(-ranked)
    threshold = jnp.where(count > 0, descending[jnp.maximum(count - 1, 0)], jnp.inf)
    rejected = candidate & (losses >= threshold)
    return jnp.where(rejected, 0.0, 1.0).astype(jnp.float32)


def selective_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    class_prior: ArrayLike,
    gamma_pos: float = 0.0,
    gamma_neg: float = 1.0,
    gamma_unknown: float = 2.0,
    clip: float = 0.0,
    likelihood_topk: int = 5,
    prior_threshold: float = 0.05,
    detach_focal_weight: bool = False,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Element-wise class-aware selective loss for partial labels ``{1, 0, -1}`` (Ben-Baruch).

    Annotated entries get ASL (:func:`asl_jax.asymmetric_loss` with γ+, γ− and the margin).
    An unknown entry (−1) is **ignored** (loss 0) when its class's prior probability exceeds
    ``prior_threshold`` (a frequent class: an unannotated entry is likely positive), or when it
    is among the ``likelihood_topk × B`` unknown entries of the batch with the highest predicted
    probability (the model finds it likely); every other unknown entry is taken as a negative
    focused with its own γ_u:

    .. math::
        \ell(z, -1) = egin{cases} 0 & 	ext{ignored} \
                      -p_m^{\gamma_u}\log(1 - p_m) & 	ext{otherwise.} \end{cases}

    Args:
      logits: floating-point logits ``[B, K]``.
      labels: ``[B, K]`` in {1, 0, −1} (any negative value is unknown).
      class_prior: ``[K]`` estimated probability that a class is present (see
        :func:`update_class_prior`).
      gamma_pos: γ+ of annotated positives (static; the paper's 0).
      gamma_neg: γ− of annotated negatives (static; the paper's 1).
      gamma_unknown: γ_u of the unknown entries taken as negatives (static; the paper's 2).
      clip: the probability margin m of the negatives (static; the paper's 0).
      likelihood_topk: unknown entries ignored per image of the batch, chosen over the whole
        batch by predicted probability (static; the paper's 5).
      prior_threshold: classes whose prior exceeds it have their unknown entries ignored (static;
        the paper's 0.05).
      detach_focal_weight: compute the focusing weights without gradient (the official code).
      where: optional ``[B, K]`` or ``[B, 1]`` mask of the rows that count (False: padding),
        for the top-k choice.

    Returns:
      The element-wise loss ``[B, K]`` (0 at the ignored entries).

    Example:
      >>> import jax.numpy as jnp
      >>> from asl_jax import selective_loss
      >>> z = jnp.array([[2.0, 3.0, -1.0, 0.0]])
      >>> y = jnp.array([[1.0, -1.0, -1.0, 0.0]])
      >>> prior = jnp.array([0.5, 0.01, 0.01, 0.01])
      >>> print(selective_loss(z, y, class_prior=prior, likelihood_topk=1).round(4))
      [[0.1269 0.     0.0227 0.3466]]

    References:
      Ben-Baruch et al., "Multi-label Classification with Partial Annotations using Class-aware
      Selective Loss", CVPR 2022, https://arxiv.org/abs/2110.10955
    """
    if isinstance(likelihood_topk, bool) or not isinstance(likelihood_topk, int):
        raise TypeError(f"likelihood_topk must be an int (it is static), got {likelihood_topk!r}.")
    if likelihood_topk < 0:
        raise ValueError(f"likelihood_topk must be >= 0, got {likelihood_topk}.")
    _check_finite_number("prior_threshold", prior_threshold, low=0.0, high=1.0)
    _check_gamma("gamma_unknown", gamma_unknown)
    _check_logits_and_labels(logits, labels)
    if jnp.ndim(logits) != 2:
        raise ValueError(f"logits must be [B, K] (the top-k is per batch), got {logits.shape}.")
    class_prior = jnp.asarray(class_prior)
    if class_prior.shape != logits.shape[-1:]:
        raise ValueError(
            f"class_prior must be [K] = {logits.shape[-1:]} (one per class), got "
            f"{class_prior.shape}."
        )
    labels = jnp.asarray(labels)
    unknown = ~known_labels_mask(labels)
    known_targets = jnp.where(unknown, 0.0, labels).astype(_compute_dtype(logits.dtype))
    focal = {"clip": clip, "detach_focal_weight": detach_focal_weight, "gamma_pos": gamma_pos}
    annotated = asymmetric_loss(logits, known_targets, gamma_neg=gamma_neg, **focal)
    as_negative = asymmetric_loss(
        logits, jnp.zeros_like(known_targets), gamma_neg=gamma_unknown, **focal
    )
    ignored = unknown & (jax.lax.stop_gradient(class_prior) > prior_threshold)
    count = likelihood_topk * logits.shape[0]
    if count:
        rows = jnp.ones(labels.shape, bool) if where is None else jnp.asarray(where, bool)
        candidate = unknown & jnp.broadcast_to(rows, labels.shape)
        scores = jnp.where(candidate, jax.lax.stop_gradient(logits).astype(jnp.float32), -jnp.inf)
        flat = scores.ravel()
        kth = jax.lax.top_k(flat, min(count, flat.size))[0][-1]
        ignored = ignored | (candidate & (scores >= kth) & (scores > -jnp.inf))
    return jnp.where(unknown, jnp.where(ignored, 0.0, as_negative), annotated)


def update_class_prior(
    class_prior: ArrayLike,
    logits: ArrayLike,
    *,
    decay: float = 0.99,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""One step of the running estimate of the class priors: ``decay·prior + (1 − decay)·p̄``.

    :math:`\bar p_k` is the batch's mean predicted probability of class k (over the rows of
    ``where``). Ben-Baruch et al. estimate the prior as the mean prediction of a trained model
    over the training set; this running average of the model being trained gives the same
    quantity during the run, without a second training. It starts from 0, so that early in
    training, while the model's probabilities are still near 0.5 everywhere, no class looks
    frequent and the unknown entries are learned as negatives first.

    Args:
      class_prior: the current estimate ``[K]``.
      logits: ``[B, K]`` logits of the batch (read without gradient).
      decay: weight of the current estimate, in [0, 1).
      where: optional ``[B]`` mask of the rows that count.

    Returns:
      The new estimate ``[K]`` (float32).
    """
    _check_finite_number("decay", decay, low=0.0, high=1.0)
    probs = jax.nn.sigmoid(jax.lax.stop_gradient(jnp.asarray(logits, jnp.float32)))
    rows = jnp.ones(probs.shape[:1], bool) if where is None else jnp.asarray(where, bool)
    weights = rows.astype(jnp.float32)[:, None]
    mean = jnp.sum(probs * weights, axis=0) / jnp.maximum(jnp.sum(weights), 1.0)
    prior = jnp.asarray(class_prior, jnp.float32)
    return jnp.where(jnp.any(rows), decay * prior + (1.0 - decay) * mean, prior)
