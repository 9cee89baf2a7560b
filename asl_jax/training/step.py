"""Pure train and eval steps.

``train_step(state, batch, ...)`` runs augmentation (on device, from ``fold_in(state.rng,
state.step)``), the forward pass with batch norm, the configured multi-label loss, the optax
update, the EMA and — with the adaptive rule on — the γ− update from the batch's probability
statistics. Under ``jax.jit`` with a batch sharded over a mesh, every reduction (loss, batch-norm
moments, Δp) is over the **global** batch: the same numbers on one device or many.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from asl_jax.adaptive import probability_stats, update_gamma_neg
from asl_jax.data.augment import AugmentConfig, augment_images, to_float
from asl_jax.losses import known_labels_mask, reduce_loss
from asl_jax.missing_labels import update_class_prior
from asl_jax.models.heads import frozen_mask
from asl_jax.training.loss_registry import (
    INVERSE_FREQUENCY,
    LossConfig,
    LossContext,
    parse_class_weights,
)
from asl_jax.training.state import TrainState

#: ``fold_in`` constant of the dropout stream within a step's key.
_DROPOUT_STREAM = 1


def elementwise_loss(
    logits: jax.Array,
    labels: jax.Array,
    loss: LossConfig,
    gamma_neg: jax.Array | float,
    *,
    epoch: jax.Array | float | None = None,
    class_prior: jax.Array | None = None,
    rows: jax.Array | None = None,
) -> jax.Array:
    """The configured element-wise loss (see :class:`LossConfig` and the loss registry).

    ``epoch`` is the training progress in epochs (the train step passes ``step / steps per
    epoch``; losses with a schedule, SPLC and large-loss rejection, read it); None outside
    training. ``class_prior`` and ``rows`` as in :class:`LossContext`.
    """
    context = LossContext(gamma_neg, epoch=epoch, class_prior=class_prior, rows=rows)
    value = loss.spec.elementwise(logits, labels, loss, context)
    weights = element_weights(loss, labels)
    return value if weights is None else value * weights


def element_weights(loss: LossConfig, labels: jax.Array) -> jax.Array | None:
    """The weight of every element of the loss: ``class_weights[k] * (pos_weight if y else 1)``.

    Soft labels interpolate: ``1 + (pos_weight - 1) * y``. None when both are the identity.
    """
    if loss.class_weights == INVERSE_FREQUENCY:
        raise ValueError(
            "loss.class_weights='inverse_frequency' is resolved from the train labels when a run "
            "starts (resolve_class_weights); the loss needs the numbers"
        )
    weights = None
    per_class = parse_class_weights(loss.class_weights)
    if per_class:
        if len(per_class) != labels.shape[-1]:
            raise ValueError(
                f"loss.class_weights has {len(per_class)} weights; expected one per class "
                f"({labels.shape[-1]})"
            )
        weights = jnp.asarray(per_class, jnp.float32)
    if loss.pos_weight != 1.0:
        # An unknown label (-1, read by the selective loss) weighs as a negative.
        positive = 1.0 + (loss.pos_weight - 1.0) * jnp.maximum(labels, 0.0)
        weights = positive if weights is None else weights * positive
    return weights


def effective_gamma_neg(loss: LossConfig, gamma_neg: jax.Array | float) -> jax.Array | float:
    """The γ− the configured loss actually applies (0 for BCE, ``focal_gamma`` for focal)."""
    return loss.spec.applied_gamma_neg(loss, gamma_neg)


def ema_decay_at(decay: float, num_updates: jax.Array) -> jax.Array:
    """Warm-up EMA decay ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates.

    Early on the average would be dominated by the random initialisation; the warm-up (as in
    TensorFlow's ``ExponentialMovingAverage(num_updates=...)``) lets it follow the parameters
    closely at first.
    """
    n = num_updates.astype(jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + n) / (10.0 + n))


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def dropout_key(state: TrainState) -> jax.Array:
    """The key of the step's dropout (ML-Decoder, stochastic depth): a stream of its own, derived
    from the step's key that the augmentation uses."""
    return jax.random.fold_in(jax.random.fold_in(state.key, state.step), _DROPOUT_STREAM)


def augmented_images(
    state: TrainState, batch: dict[str, jax.Array], augment: AugmentConfig
) -> jax.Array:
    """The batch's images after the step's augmentation (keyed by ``fold_in(rng, step)``)."""
    return augment_images(
        jax.random.fold_in(state.key, state.step),
        batch["image"],
        flip=augment.flip,
        cutout=augment.cutout,
        randaugment=augment.randaugment,
    )


def loss_and_logits(
    params: Any,
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    where: jax.Array | None,
    *,
    loss: LossConfig,
    gamma_neg: jax.Array | float,
    epoch: jax.Array | float | None = None,
    rows: jax.Array | None = None,
) -> tuple[jax.Array, tuple[jax.Array, Any]]:
    """The forward pass in training mode and the reduced loss: ``(loss, (logits, batch_stats))``.

    The function the train step differentiates with respect to ``params``; ``epoch`` and
    ``rows`` as in :func:`elementwise_loss` (the class priors come from the state).
    """
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats},
        images,
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": dropout_key(state)},
    )
    logits = logits.astype(jnp.float32)
    elementwise = elementwise_loss(
        logits, labels, loss, gamma_neg, epoch=epoch, class_prior=state.class_prior, rows=rows
    )
    value = reduce_loss(elementwise, loss.reduction, where=where)
    # Models without batch norm (ViT) have no statistics to update.
    return value, (logits, updates.get("batch_stats", state.batch_stats))


def known_labels(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """The labels with unknown entries set to 0, and where the loss counts (known, not padding).

    Unknown labels (-1, any negative value) are masked out; known labels are used as given (hard
    or soft). NaN labels are NOT masked: they make the loss non-finite and the step is skipped and
    counted, which is what corrupt data should do.
    """
    raw_labels = jnp.asarray(batch["labels"], jnp.float32)
    known = known_labels_mask(raw_labels)
    where = known
    if "mask" in batch:
        where = where & jnp.asarray(batch["mask"], bool)[:, None]
    return jnp.where(known, raw_labels, 0.0), where


class LossLabels(NamedTuple):
    """A batch's labels as the loss and the probability statistics see them.

    Attributes:
      loss_labels: what the loss reads: unknown labels (-1) set to 0, or kept for a loss that
        reads them.
      loss_where: where the loss counts: known labels (``loss.unknown='ignore'``) or every
        label (unknown ones assumed negative, or read by the loss), of the rows that count.
      stats_labels: {0, 1} labels of the statistics (Δp): unknown set to 0.
      stats_where: where the statistics count: as the loss, but never an unknown label that the
        loss reads itself.
      rows: ``[B, 1]`` the rows that count (False: padding).
    """

    loss_labels: jax.Array
    loss_where: jax.Array
    stats_labels: jax.Array
    stats_where: jax.Array
    rows: jax.Array


def loss_labels(batch: dict[str, jax.Array], loss: LossConfig) -> LossLabels:
    """The batch's labels for ``loss``: unknown labels ignored, assumed negative or passed on.

    What becomes of an unknown label is the loss's own choice (its registry entry), or
    ``loss.unknown`` for a loss that leaves it to the config.
    """
    targets, known = known_labels(batch)
    rows = jnp.ones(targets.shape[:1], bool)
    if "mask" in batch:
        rows = jnp.asarray(batch["mask"], bool)
    rows = rows[:, None]
    every_row = jnp.broadcast_to(rows, targets.shape)
    mode = loss.spec.unknown_labels(loss)
    if mode == "ignore":
        return LossLabels(targets, known, targets, known, rows)
    if mode == "negative":
        return LossLabels(targets, every_row, targets, every_row, rows)
    raw = jnp.asarray(batch["labels"], jnp.float32)
    return LossLabels(raw, every_row, targets, known, rows)


def _next_gamma_neg(loss: LossConfig, gamma_neg: jax.Array, delta_p: jax.Array) -> jax.Array:
    """The adaptive rule's γ− after a step with the batch's ``delta_p``."""
    return update_gamma_neg(
        gamma_neg,
        delta_p,
        target=loss.delta_p_target,
        step_size=loss.adaptive_step_size,
        min_value=loss.adaptive_min_gamma_neg,
        max_value=loss.adaptive_max_gamma_neg,
    )


def _ema_update(
    state: TrainState, params: Any, batch_stats: Any, ema_decay: float
) -> tuple[Any, Any]:
    """The EMA of the parameters and of the batch-norm statistics after this step's update."""
    decay = ema_decay_at(ema_decay, state.step - state.num_skipped)
    ema_params = optax.incremental_update(params, state.ema_params, 1.0 - decay)
    # Constants (ML-Decoder's queries) stay exact: the EMA of equal values rounds.
    ema_params = jax.tree.map(
        lambda frozen, p, e: p if frozen else e, frozen_mask(params), params, ema_params
    )
    ema_batch_stats = optax.incremental_update(batch_stats, state.ema_batch_stats, 1.0 - decay)
    return ema_params, ema_batch_stats


def _advance(state: TrainState, updated: dict[str, Any], finite: jax.Array) -> TrainState:
    """The next state: ``updated`` fields when the step was finite (else the current ones), and
    the step and skip counters."""
    current = {name: getattr(state, name) for name in updated}
    return state.replace(
        **_select(finite, updated, current),
        step=state.step + 1,
        num_skipped=state.num_skipped + jnp.where(finite, 0, 1).astype(jnp.int32),
        consecutive_nonfinite=jnp.where(finite, 0, state.consecutive_nonfinite + 1).astype(
            jnp.int32
        ),
    )


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    loss: LossConfig,
    augment: AugmentConfig,
    ema_decay: float,
    schedule: optax.Schedule | None = None,
    steps_per_epoch: int | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimisation step (pure; ``jit`` it with the keyword arguments bound).

    Args:
      state: the current :class:`TrainState`.
      batch: ``"image"`` uint8 ``[B, H, W, 3]``, ``"labels"`` float ``[B, K]`` in {0, 1}
        (``-1`` = unknown label, masked out of the loss and statistics), optional ``"mask"`` bool
        ``[B]`` (False rows contribute nothing to the loss or the statistics).
      loss: the loss settings (the ``loss`` config block).
      augment: augmentation settings (the ``augment`` config block).
      ema_decay: EMA decay (``ema_decay`` of the config; with the warm-up of
        :func:`ema_decay_at`).
      schedule: learning-rate schedule, only used to report ``lr``.
      steps_per_epoch: steps in one epoch, for losses with a schedule in epochs (SPLC's
        warm-up); None: they see no epoch (SPLC never corrects).

    Returns:
      ``(new_state, metrics)``; metrics are float32 scalars: ``loss``, ``delta_p``, ``pos_mean``,
      ``neg_mean``, ``gamma_neg`` (the γ− the loss applied at this step: 0 for BCE,
      ``focal_gamma`` for focal), ``lr`` (of this step), ``grad_norm``,
      ``skipped`` (1 when the loss or the gradient was not finite: the state is then unchanged
      except the step and skip counters), ``consecutive_nonfinite``.
    """
    images = augmented_images(state, batch, augment)
    labels = loss_labels(batch, loss)
    # A LossConfig is adaptive only for a loss whose registry entry allows it (its check).
    gamma_neg = state.gamma_neg if loss.adaptive else loss.gamma_neg

    epoch = None if steps_per_epoch is None else state.step / steps_per_epoch

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        return loss_and_logits(
            params,
            state,
            images,
            labels.loss_labels,
            labels.loss_where,
            loss=loss,
            gamma_neg=gamma_neg,
            epoch=epoch,
            rows=labels.rows,
        )

    (value, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    logits = jax.lax.stop_gradient(logits)
    stats = probability_stats(logits, labels.stats_labels, where=labels.stats_where)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)

    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params, ema_batch_stats = _ema_update(state, params, batch_stats, ema_decay)
    new_gamma_neg = (
        _next_gamma_neg(loss, state.gamma_neg, stats.delta_p) if loss.adaptive else state.gamma_neg
    )

    updated = {
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": opt_state,
        "ema_params": ema_params,
        "ema_batch_stats": ema_batch_stats,
        "gamma_neg": jnp.asarray(new_gamma_neg, jnp.float32),
    }
    if loss.spec.reads_class_prior:
        updated["class_prior"] = update_class_prior(
            state.class_prior, logits, decay=loss.prior_decay, where=labels.rows[:, 0]
        )
    new_state = _advance(state, updated, finite)
    # The optimizer's own step count: skipped steps did not advance it.
    lr = schedule(state.step - state.num_skipped) if schedule is not None else jnp.nan
    metrics = {
        "loss": value,
        "delta_p": stats.delta_p,
        "pos_mean": stats.pos_mean,
        "neg_mean": stats.neg_mean,
        "gamma_neg": jnp.asarray(effective_gamma_neg(loss, gamma_neg), jnp.float32),
        "lr": jnp.asarray(lr, jnp.float32),
        "grad_norm": grad_norm,
        "skipped": jnp.where(finite, 0.0, 1.0),
        "consecutive_nonfinite": new_state.consecutive_nonfinite,
    }
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Probabilities of the regular and the EMA model (inference-mode batch norm).

    Args:
      state: a :class:`TrainState`.
      batch: ``"image"`` uint8 ``[B, H, W, 3]``, ``"labels"`` ``[B, K]``, optional ``"mask"``
        ``[B]`` (False on the padding rows of the last batch).

    Returns:
      ``"probs"`` and ``"probs_ema"`` float32 ``[B, K]`` (sigmoid of the logits), ``"labels"``
      and ``"mask"`` passed through (the mask all True when the batch has none).
    """
    images = to_float(batch["image"])

    def probs(params: Any, batch_stats: Any) -> jax.Array:
        logits = state.apply_fn({"params": params, "batch_stats": batch_stats}, images, train=False)
        return jax.nn.sigmoid(logits.astype(jnp.float32))

    labels = jnp.asarray(batch["labels"], jnp.float32)
    mask = batch.get("mask")
    mask = jnp.ones(labels.shape[:1], bool) if mask is None else jnp.asarray(mask, bool)
    return {
        "probs": probs(state.params, state.batch_stats),
        "probs_ema": probs(state.ema_params, state.ema_batch_stats),
        "labels": labels,
        "mask": mask,
    }
