"""Optimizer factory: Adam / AdamW with one-cycle, cosine or constant learning rate.

The official ASL recipe is Adam, lr 1e-4, a one-cycle schedule with 20% warm-up and weight decay
1e-4 on weights only (coupled, PyTorch ``Adam(weight_decay=...)`` style). Here ``"adam"`` adds the
L2 term to the gradient before Adam (as the official code) and ``"adamw"`` decays the weights
directly (Loshchilov & Hutter, 2019). In both cases only kernels (convolution and dense weights)
are decayed, never biases or batch-norm scales/offsets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")


def kernel_mask(params: Any) -> Any:
    """``True`` for kernels (leaves named ``kernel`` or with ``ndim > 1``), ``False`` otherwise.

    Args:
      params: a parameter pytree (Flax ``params`` collection).

    Returns:
      A pytree of booleans with the structure of ``params``.
    """

    def is_kernel(path: tuple[Any, ...], leaf: Any) -> bool:
        name = getattr(path[-1], "key", None) if path else None
        return name == "kernel" or getattr(leaf, "ndim", 0) > 1

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def create_schedule(
    name: str, *, learning_rate: float, total_steps: int, warmup_fraction: float = 0.2
) -> optax.Schedule:
    """Learning-rate schedule by name.

    - ``"onecycle"``: :func:`optax.cosine_onecycle_schedule` with ``pct_start=warmup_fraction``
      and PyTorch ``OneCycleLR``'s defaults (start at ``lr / 25``, end at ``lr / 25e4``), as the
      official ASL training script.
    - ``"cosine"``: linear warm-up from 0 over ``warmup_fraction`` of the steps, then cosine decay
      to 0.
    - ``"constant"``: ``learning_rate`` throughout.

    Args:
      name: ``"onecycle"``, ``"cosine"`` or ``"constant"``.
      learning_rate: peak learning rate.
      total_steps: number of optimizer steps of the run.
      warmup_fraction: fraction of ``total_steps`` spent warming up.

    Returns:
      An optax schedule ``step -> learning rate``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps={total_steps!r}: expected a positive integer")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction={warmup_fraction!r}: expected a value in [0, 1)")
    if name == "onecycle":
        # optax's one-cycle needs a non-degenerate warm-up phase.
        pct = min(max(warmup_fraction, 1.0 / total_steps), 0.99)
        return optax.cosine_onecycle_schedule(
            total_steps, learning_rate, pct_start=pct, div_factor=25.0, final_div_factor=1e4
        )
    if name == "cosine":
        warmup = round(warmup_fraction * total_steps)
        return optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, warmup_steps=warmup, decay_steps=total_steps, end_value=0.0
        )
    if name == "constant":
        return optax.constant_schedule(learning_rate)
    raise ValueError(f"schedule={name!r}: expected one of {', '.join(SCHEDULES)}")


def create_optimizer(
    name: str,
    *,
    schedule: optax.Schedule,
    weight_decay: float = 0.0,
    grad_clip_norm: float | None = None,
) -> optax.GradientTransformation:
    """Adam or AdamW with kernel-only weight decay and optional global-norm clipping.

    Args:
      name: ``"adam"`` (L2 on kernels added to the gradient, as the official ASL code) or
        ``"adamw"`` (decoupled weight decay on kernels).
      schedule: learning-rate schedule (see :func:`create_schedule`).
      weight_decay: decay coefficient (0 disables it).
      grad_clip_norm: clip the gradient to this global norm before anything else; ``None`` or 0
        disables clipping.

    Returns:
      An optax gradient transformation.

    Examples:
      >>> tx = create_optimizer("adam", schedule=optax.constant_schedule(1e-3), weight_decay=1e-4)
    """
    parts = []
    if grad_clip_norm:
        parts.append(optax.clip_by_global_norm(grad_clip_norm))
    if name == "adam":
        if weight_decay:
            parts.append(optax.add_decayed_weights(weight_decay, mask=kernel_mask))
        parts.append(optax.scale_by_adam())
        parts.append(optax.scale_by_learning_rate(schedule))
    elif name == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=weight_decay, mask=kernel_mask))
    else:
        raise ValueError(f"optimizer={name!r}: expected one of {', '.join(OPTIMIZERS)}")
    return optax.chain(*parts)


class FreezeState(NamedTuple):
    """Steps seen by :func:`freeze_for`."""

    count: jax.Array


def freeze_for(steps: int, trainable: Callable[[Any], Any]) -> optax.GradientTransformation:
    """Zeroes the updates of every parameter but ``trainable`` ones for the first ``steps`` steps.

    Chained after the optimizer (weight decay included), so the frozen parameters do not move at
    all; afterwards every update passes unchanged. Fine-tuning uses it to train a new classifier
    head on a pretrained backbone before the backbone adapts.

    Args:
      steps: number of optimizer updates during which non-trainable parameters stay fixed.
      trainable: ``params -> pytree of bools`` (True = updated from the start).

    Examples:
      >>> head = lambda p: jax.tree_util.tree_map_with_path(
      ...     lambda path, _: path[0].key == "fc", p)
      >>> tx = optax.chain(optax.adam(1e-3), freeze_for(100, head))
    """

    def init(params: Any) -> FreezeState:
        del params
        return FreezeState(count=jnp.zeros([], jnp.int32))

    def update(updates: Any, state: FreezeState, params: Any = None) -> tuple[Any, FreezeState]:
        del params
        frozen = state.count < steps
        updates = jax.tree.map(
            lambda u, keep: u if keep else jnp.where(frozen, jnp.zeros_like(u), u),
            updates,
            trainable(updates),
        )
        return updates, FreezeState(count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init, update)


def head_mask(head: str) -> Callable[[Any], Any]:
    """``params -> bools``: True for the parameters under the Flax module path ``head`` (a torch
    name prefix such as ``"fc"`` or ``"head.fc"``; the layouts name Flax modules as torch does)."""
    parts = tuple(head.split("."))

    def mask(params: Any) -> Any:
        def is_head(path: tuple[Any, ...], leaf: Any) -> bool:
            names = tuple(str(getattr(p, "key", p)) for p in path)
            return names[: len(parts)] == parts

        return jax.tree_util.tree_map_with_path(is_head, params)

    return mask
