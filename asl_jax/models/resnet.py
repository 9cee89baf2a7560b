"""ResNet-18/34/50 in Flax Linen (He et al., 2016), with a configurable compute dtype.

Parameters are always float32; ``dtype=jnp.bfloat16`` runs the convolutions and batch norm in
bfloat16 (mixed precision on accelerators). Logits are returned as float32 so that the loss is
computed in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# ImageNet statistics: ResNets are usually fine-tuned from ImageNet weights that expect them.
# NumPy, not jnp: creating a device array at import would initialise the JAX backend before
# ``jax.distributed.initialize`` can run.
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with an identity (or 1×1 projection) shortcut."""

    features: int
    strides: int = 1
    conv: Callable[..., nn.Module] = nn.Conv
    norm: Callable[..., nn.Module] = nn.BatchNorm

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        residual = x
        y = self.conv(self.features, (3, 3), (self.strides, self.strides))(x)
        y = nn.relu(self.norm()(y))
        y = self.conv(self.features, (3, 3))(y)
        # Zero-initialised last scale: each block starts as the identity (Goyal et al., 2017).
        y = self.norm(scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = self.conv(self.features, (1, 1), (self.strides, self.strides))(residual)
            residual = self.norm()(residual)
        return nn.relu(residual + y)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, with a projection shortcut when shapes change."""

    features: int
    strides: int = 1
    conv: Callable[..., nn.Module] = nn.Conv
    norm: Callable[..., nn.Module] = nn.BatchNorm

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        residual = x
        y = nn.relu(self.norm()(self.conv(self.features, (1, 1))(x)))
        y = self.conv(self.features, (3, 3), (self.strides, self.strides))(y)
        y = nn.relu(self.norm()(y))
        y = self.conv(self.features * 4, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = self.conv(self.features * 4, (1, 1), (self.strides, self.strides))(residual)
            residual = self.norm()(residual)
        return nn.relu(residual + y)


class ResNet(nn.Module):
    """ResNet v1.5 (stride in the 3×3 convolution of bottlenecks).

    Attributes:
      stage_sizes: number of blocks in each of the four stages.
      block_cls: :class:`BasicBlock` or :class:`Bottleneck`.
      num_classes: number of output logits.
      num_filters: channels of the first stage.
      dtype: compute dtype; parameters are float32 and logits float32.
    """

    stage_sizes: Sequence[int]
    block_cls: type[nn.Module]
    num_classes: int
    num_filters: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, padding="SAME")
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
        )
        x = ((jnp.asarray(x, jnp.float32) - _MEAN) / _STD).astype(self.dtype)
        x = conv(self.num_filters, (7, 7), (2, 2), name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = self.block_cls(self.num_filters * 2**i, strides=strides, conv=conv, norm=norm)(
                    x
                )
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)


ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
