"""Layers that several backbones share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class SqueezeExcite(nn.Module):
    """Channel gating: mean pool, 1×1 conv, activation, 1×1 conv, sigmoid.

    ``names`` are the two convolutions' (the torch layouts': TResNet's ``fc1``/``fc2``,
    EfficientNet's ``conv_reduce``/``conv_expand``).
    """

    reduced: int
    dtype: Any = jnp.float32
    act: Callable[[jax.Array], jax.Array] = nn.relu
    names: tuple[str, str] = ("fc1", "fc2")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        reduce_name, expand_name = self.names
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = self.act(nn.Conv(self.reduced, (1, 1), dtype=self.dtype, name=reduce_name)(s))
        s = nn.Conv(x.shape[-1], (1, 1), dtype=self.dtype, name=expand_name)(s)
        return x * nn.sigmoid(s)
