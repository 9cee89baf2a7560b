"""ResNet-18/34/50/101 in Flax Linen (He et al., 2016), in torchvision's layout.

The network is torchvision's ``resnet18`` … ``resnet101`` op for op: the same explicit padding
(3 on each side of the 7×7 stem, 1 around every 3×3 convolution and the 3/2 max-pool; XLA's
``"SAME"`` would pad stride-2 layers asymmetrically and shift every feature map), the stride in
the 3×3 convolution of bottlenecks (ResNet v1.5), batch norm with ε = 1e-5, and submodules named
like torch's (``conv1``, ``bn1``, ``layer1/0/conv1``, ``layer2/0/downsample/0``, ``fc``). So the
weights of torchvision (and of timm's ResNets, which share the layout) convert by name
(:func:`torch_to_flax`, :func:`flax_to_torch`) and give the same logits.

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

from asl_jax.models.heads import classifier_head
from asl_jax.models.normalization import normalize
from asl_jax.models.torch_layout import mirrored_to_flax, mirrored_to_torch

#: torch name prefix of the classifier head.
TORCH_HEAD = "fc"
#: The normalisation torchvision's (and timm's ImageNet) ResNet weights expect.
TORCH_NORMALIZATION = "imagenet"


def _pad(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """torch's symmetric ``padding=kernel // 2``."""
    return ((kernel // 2, kernel // 2),) * 2


class _Downsample(nn.Module):
    """The 1×1 (strided) projection shortcut: torch's ``downsample = Sequential(conv, bn)``."""

    features: int
    strides: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(self.features, (1, 1), (self.strides,) * 2, padding=_pad(1), name="0")(x)
        return self.norm(name="1")(x)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with an identity (or 1×1 projection) shortcut."""

    features: int
    strides: int = 1
    conv: Callable[..., nn.Module] = nn.Conv
    norm: Callable[..., nn.Module] = nn.BatchNorm
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv(self.features, (3, 3), (self.strides,) * 2, padding=_pad(3), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), padding=_pad(3), name="conv2")(y)
        # Zero-initialised last scale: each block starts as the identity (Goyal et al., 2017).
        y = self.norm(scale_init=nn.initializers.zeros, name="bn2")(y)
        return nn.relu(_shortcut(self, x, y) + y)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, with a projection shortcut when shapes change."""

    features: int
    strides: int = 1
    conv: Callable[..., nn.Module] = nn.Conv
    norm: Callable[..., nn.Module] = nn.BatchNorm
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv(self.features, (1, 1), padding=_pad(1), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), (self.strides,) * 2, padding=_pad(3), name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(self.features * 4, (1, 1), padding=_pad(1), name="conv3")(y)
        y = self.norm(scale_init=nn.initializers.zeros, name="bn3")(y)
        return nn.relu(_shortcut(self, x, y) + y)


def _shortcut(block: BasicBlock | Bottleneck, x: jax.Array, y: jax.Array) -> jax.Array:
    """The identity, or torch's ``downsample`` projection when the block changes the shape."""
    if x.shape == y.shape:
        return x
    features = block.features * block.expansion
    return _Downsample(features, block.strides, block.conv, block.norm, name="downsample")(x)


class ResNet(nn.Module):
    """ResNet v1.5 (stride in the 3×3 convolution of bottlenecks), torchvision's layout.

    Attributes:
      stage_sizes: number of blocks in each of the four stages.
      block_cls: :class:`BasicBlock` or :class:`Bottleneck`.
      num_classes: number of output logits.
      num_filters: channels of the first stage (64 in torchvision's models).
      dtype: compute dtype; parameters are float32 and logits float32.
      normalization: how ``[0, 1]`` images are normalised before the stem (a name of
        :data:`asl_jax.models.normalization.NORMALIZATIONS`; ImageNet statistics by default).
      classifier: the head on the features, a name of
        :data:`~asl_jax.models.heads.HEAD_NAMES` (``linear`` or ``ml_decoder``).
      ml_decoder_groups: ML-Decoder's number of queries (0 = ``min(num_classes, 100)``).
    """

    stage_sizes: Sequence[int]
    block_cls: type[nn.Module]
    num_classes: int
    num_filters: int = 64
    dtype: Any = jnp.float32
    normalization: str = TORCH_NORMALIZATION
    classifier: str = "linear"
    ml_decoder_groups: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype)
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,  # torch's momentum=0.1
            epsilon=1e-5,
            dtype=self.dtype,
        )
        x = normalize(x, self.normalization, self.dtype)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=_pad(7), name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
        for i, num_blocks in enumerate(self.stage_sizes):
            x = _Stage(
                self.block_cls,
                self.num_filters * 2**i,
                num_blocks,
                strides=1 if i == 0 else 2,
                conv=conv,
                norm=norm,
                name=f"layer{i + 1}",
            )(x)
        return classifier_head(self, x, train=train, name="fc")


class _Stage(nn.Module):
    """torch's ``layerN``: blocks named ``"0"``, ``"1"``, …; the first one strides."""

    block_cls: type[nn.Module]
    features: int
    num_blocks: int
    strides: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.num_blocks):
            strides = self.strides if j == 0 else 1
            x = self.block_cls(self.features, strides, self.conv, self.norm, name=str(j))(x)
        return x


ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNet101 = partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)

#: ``state_dict`` of a torchvision / timm ResNet -> Flax variables (the module tree mirrors it).
torch_to_flax = mirrored_to_flax
#: Flax variables -> torchvision ``state_dict`` (without ``num_batches_tracked``).
flax_to_torch = mirrored_to_torch
