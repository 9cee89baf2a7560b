"""The train state: parameters, optimizer state, EMA, batch-norm statistics and the adaptive γ−."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes, as one pytree.

    Attributes:
      step: number of train steps taken (int32), including skipped non-finite ones; it indexes the
        data order and the step RNG, so a restored state continues exactly.
      params: model parameters (float32).
      batch_stats: batch-norm running statistics.
      opt_state: optax state.
      ema_params: exponential moving average of ``params``.
      ema_batch_stats: exponential moving average of ``batch_stats`` (the EMA model is evaluated
        with its own statistics, like the official ``ModelEma`` that averages the whole
        ``state_dict``).
      gamma_neg: the negative focusing parameter γ− (float32 scalar), updated by the adaptive
        rule when ``loss.adaptive``. A run without the rule carries (and checkpoints) its start
        value, which nothing reads: the loss takes ``loss.gamma_neg`` from the config then. It
        stays in every state so that all runs share one checkpoint layout.
      rng: raw PRNG key data (uint32); step ``t`` uses ``fold_in(rng, t)``.
      num_skipped: total number of steps skipped because the loss or gradient was not finite.
      consecutive_nonfinite: length of the current run of skipped steps (0 after a good step).
      apply_fn: the model's ``apply`` (static).
      tx: the optax transformation (static).
      class_prior: the running estimate of the class priors ``[K]`` (float32) for a loss that
        reads them (the selective loss), None otherwise: a None field is not checkpointed, so
        the checkpoints of every other run keep their layout.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    ema_params: Any
    ema_batch_stats: Any
    gamma_neg: jax.Array
    rng: jax.Array
    num_skipped: jax.Array
    consecutive_nonfinite: jax.Array
    apply_fn: Callable[..., Any] = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    class_prior: Any = None

    @property
    def key(self) -> jax.Array:
        """The run's base PRNG key (typed)."""
        return jax.random.wrap_key_data(self.rng)


def create_train_state(
    rng: jax.Array,
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    image_shape: tuple[int, int, int],
    gamma_neg: float,
    variables: Any = None,
    class_prior_classes: int = 0,
) -> TrainState:
    """Initialises a :class:`TrainState`.

    Args:
      rng: a PRNG key (typed or raw); split into the init key and the run's step key.
      model: a Flax module from :func:`asl_jax.models.create_model`.
      tx: the optax optimizer.
      image_shape: ``(H, W, C)`` of the model input.
      gamma_neg: initial γ−.
      variables: ``{"params", "batch_stats"}`` to start from (pretrained weights, see
        :func:`asl_jax.models.pretrained.from_torch`) instead of the model's initialisation; pass
        them as an argument of the jitted initialiser, not as a constant closed over.
      class_prior_classes: K > 0 carries a class-prior estimate of K zeros (for a loss that
        reads it); 0 carries none.

    Returns:
      The initial state (step 0, EMA equal to the parameters).
    """
    if not jnp.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
    init_key, step_key = jax.random.split(rng)
    if variables is None:
        images = jnp.zeros((1, *image_shape), jnp.float32)
        variables = model.init(init_key, images, train=False)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), variables["params"])
    batch_stats = jax.tree.map(
        lambda x: jnp.asarray(x, jnp.float32), variables.get("batch_stats", {})
    )
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
        step=zero,
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        # Copies, so that donating the state never aliases two fields.
        ema_params=jax.tree.map(jnp.copy, params),
        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
        gamma_neg=jnp.asarray(gamma_neg, jnp.float32),
        rng=jax.random.key_data(step_key),
        num_skipped=zero,
        consecutive_nonfinite=zero,
        apply_fn=model.apply,
        tx=tx,
        class_prior=jnp.zeros(class_prior_classes, jnp.float32) if class_prior_classes else None,
    )


def checkpoint_items(state: TrainState) -> dict[str, Any]:
    """The state's arrays as a plain dict (what is checkpointed; static fields excluded).

    Derived from the dataclass fields, so that a field added to :class:`TrainState` is saved
    without editing this function. A field that is None (a class prior the loss does not read)
    is left out: the checkpoint has the layout it had before the field existed.
    """
    return {
        field.name: getattr(state, field.name)
        for field in dataclasses.fields(state)
        if field.metadata.get("pytree_node", True) and getattr(state, field.name) is not None
    }
