"""ConvNeXt-T/S/B (Liu et al., "A ConvNet for the 2020s", 2022) in Flax Linen, in timm's layout.

``convnext_tiny``, ``convnext_small`` and ``convnext_base`` are timm's models of those names and
torchvision's (the same network): a 4×4 stride-4 stem with layer norm; four stages of blocks
(7×7 depthwise convolution, layer norm over channels — channels-last, eps 1e-6 —, a 4× MLP with
exact GELU, a learned per-channel *layer scale* ``gamma``, stochastic depth, a residual), a layer
norm and 2×2 stride-2 convolution between stages; global average pooling, layer norm and a
linear classifier. Submodules are named as timm's (``stem/0``, ``stages/1/downsample/1``,
``stages/2/blocks/4/mlp/fc1``, ``head/norm``, ``head/fc``) so the weights convert by name;
:func:`rename_torchvision` maps torchvision's names (``features.3.4.block.3``, ``layer_scale``)
to timm's.

Stochastic depth (``drop_path_rate``, 0 by default) drops each block's residual branch per
example in training, with probability rising linearly from 0 at the first block to
``drop_path_rate`` at the last, and rescales the kept branches by ``1 / (1 - p)``; it draws from
the ``dropout`` PRNG stream.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from asl_jax.models.heads import classifier_head, global_average
from asl_jax.models.normalization import normalize
from asl_jax.models.torch_layout import mirrored_to_flax, mirrored_to_torch

#: torch name prefix of the linear classifier (timm's; its ``head.norm`` belongs to the body).
TORCH_HEAD = "head.fc"
#: What an ML-Decoder replaces: timm's whole ``head`` (pooling, norm and classifier).
TORCH_ML_DECODER_HEAD = "head"
_EPS = 1e-6
#: ``(blocks per stage, channels of the first stage)`` of each size.
SIZES = {"tiny": ((3, 3, 9, 3), 96), "small": ((3, 3, 27, 3), 96), "base": ((3, 3, 27, 3), 128)}


def drop_path(x: jax.Array, rate: float, *, train: bool, module: nn.Module) -> jax.Array:
    """Stochastic depth: zeroes whole examples of a residual branch with probability ``rate``
    in training and scales the others by ``1 / (1 - rate)`` (identity in evaluation)."""
    if not train or rate == 0.0:
        return x
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, (x.shape[0], 1, 1, 1))
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class _Block(nn.Module):
    """``x + drop_path(gamma * mlp(norm(conv_dw(x))))``."""

    drop_path_rate: float
    train: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        y = nn.Conv(
            c, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=c, dtype=self.dtype,
            name="conv_dw",
        )(x)  # fmt: skip
        y = nn.LayerNorm(epsilon=_EPS, dtype=self.dtype, name="norm")(y)
        y = _Mlp(4 * c, self.dtype, name="mlp")(y)
        gamma = self.param("gamma", nn.initializers.constant(1e-6), (c,))
        y = y * gamma.astype(self.dtype)
        return x + drop_path(y, self.drop_path_rate, train=self.train, module=self)


class _Mlp(nn.Module):
    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x), approximate=False)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(y)


class _Sequential(nn.Module):
    """torch's ``Sequential`` of a norm and a convolution (``stem``, ``downsample``): the
    submodules ``"0"`` and ``"1"``, the convolution first in the stem."""

    features: int
    kernel: int
    conv_first: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel
        conv = partial(nn.Conv, self.features, (k, k), (k, k), padding="VALID", dtype=self.dtype)
        norm = partial(nn.LayerNorm, epsilon=_EPS, dtype=self.dtype)
        if self.conv_first:
            return norm(name="1")(conv(name="0")(x))
        return conv(name="1")(norm(name="0")(x))


class _Stage(nn.Module):
    features: int
    depth: int
    rates: Sequence[float]
    downsample: bool
    train: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.downsample:
            x = _Sequential(
                self.features, 2, conv_first=False, dtype=self.dtype, name="downsample"
            )(x)
        blocks = _Blocks(self.depth, self.rates, self.train, self.dtype, name="blocks")
        return blocks(x)


class _Blocks(nn.Module):
    depth: int
    rates: Sequence[float]
    train: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.depth):
            x = _Block(self.rates[j], self.train, self.dtype, name=str(j))(x)
        return x


class _Stages(nn.Module):
    depths: Sequence[int]
    width: int
    drop_path_rate: float
    train: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
        start = 0
        for i, depth in enumerate(self.depths):
            x = _Stage(
                self.width * 2**i,
                depth,
                tuple(rates[start : start + depth]),
                downsample=i > 0,
                train=self.train,
                dtype=self.dtype,
                name=str(i),
            )(x)
            start += depth
        return x


class _LinearHead(nn.Module):
    """timm's ``head``: average pooling, layer norm, linear classifier."""

    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.LayerNorm(epsilon=_EPS, dtype=self.dtype, name="norm")(global_average(x))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)


class ConvNeXt(nn.Module):
    """ConvNeXt (see the module docstring).

    Attributes:
      num_classes: number of output logits.
      depths: blocks per stage (T: 3, 3, 9, 3; S and B: 3, 3, 27, 3).
      width: channels of the first stage (T, S: 96; B: 128); they double at every stage.
      drop_path_rate: stochastic depth of the last block (0 = none), in training only.
      normalization: input normalisation (ImageNet statistics, as the published weights).
      dtype: compute dtype; parameters and logits are float32.
      classifier: ``linear`` (timm's head: pooling, layer norm, linear) or ``ml_decoder`` (on the
        last stage's feature map, in place of timm's whole head).
      ml_decoder_groups: ML-Decoder's number of queries (0 = ``min(num_classes, 100)``).
    """

    num_classes: int
    depths: Sequence[int] = SIZES["tiny"][0]
    width: int = 96
    drop_path_rate: float = 0.0
    normalization: str = "imagenet"
    dtype: Any = jnp.float32
    classifier: str = "linear"
    ml_decoder_groups: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={self.drop_path_rate}: expected a value in [0, 1)")
        x = normalize(x, self.normalization, self.dtype)
        x = _Sequential(self.width, 4, conv_first=True, dtype=self.dtype, name="stem")(x)
        x = _Stages(
            tuple(self.depths), self.width, self.drop_path_rate, train, self.dtype, name="stages"
        )(x)
        if self.classifier == "linear":
            return _LinearHead(self.num_classes, self.dtype, name="head")(x).astype(jnp.float32)
        return classifier_head(self, x, train=train, name=TORCH_ML_DECODER_HEAD)


#: ``model.name -> module builder`` of every size.
VARIANTS = {
    f"convnext_{size}": partial(ConvNeXt, depths=depths, width=width)
    for size, (depths, width) in SIZES.items()
}


def torch_to_flax(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Flax variables of a timm ConvNeXt state dict (the layer scales ``gamma`` are vectors)."""
    gammas = {k: v for k, v in state_dict.items() if k.endswith(".gamma")}
    variables = mirrored_to_flax({k: v for k, v in state_dict.items() if k not in gammas})
    for key, value in gammas.items():
        tree = variables["params"]
        *modules, leaf = key.split(".")
        for module in modules:
            tree = tree.setdefault(module, {})
        tree[leaf] = np.asarray(value, np.float32)
    return variables


def flax_to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """timm's ConvNeXt state dict of Flax variables."""
    gammas: dict[str, np.ndarray] = {}

    def without_gammas(tree: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        out = {}
        for name, value in tree.items():
            if name == "gamma":
                gammas[f"{prefix}{name}"] = np.asarray(value, np.float32)
            elif isinstance(value, Mapping):
                out[name] = without_gammas(value, f"{prefix}{name}.")
            else:
                out[name] = value
        return out

    params = without_gammas(variables["params"], "")
    out = mirrored_to_torch({**variables, "params": params})
    out.update(gammas)
    return out


_BLOCK_LAYERS = {
    "block.0": "conv_dw",
    "block.2": "norm",
    "block.3": "mlp.fc1",
    "block.5": "mlp.fc2",
}


def _torchvision_name(key: str) -> str:
    """timm's name of one torchvision ConvNeXt entry (unchanged when it is not torchvision's)."""
    if m := re.fullmatch(r"features\.0\.([01])\.(\w+)", key):
        return f"stem.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"features\.([246])\.([01])\.(\w+)", key):
        return f"stages.{int(m[1]) // 2}.downsample.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"features\.([1357])\.(\d+)\.(block\.\d|layer_scale)\.?(\w*)", key):
        block = f"stages.{int(m[1]) // 2}.blocks.{m[2]}"
        if m[3] == "layer_scale":
            return f"{block}.gamma"
        if m[3] in _BLOCK_LAYERS:
            return f"{block}.{_BLOCK_LAYERS[m[3]]}.{m[4]}"
    if m := re.fullmatch(r"classifier\.([02])\.(\w+)", key):
        return f"head.{'norm' if m[1] == '0' else 'fc'}.{m[2]}"
    return key


def rename_torchvision(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """timm's names for torchvision's ConvNeXt names (``features.5.2.block.3.weight`` is
    ``stages.2.blocks.2.mlp.fc1.weight``; ``layer_scale`` ``[C, 1, 1]`` is ``gamma`` ``[C]``);
    timm's names pass unchanged."""
    out = {}
    for key, value in state_dict.items():
        renamed = _torchvision_name(key)
        if key.endswith("layer_scale"):
            value = np.asarray(value).reshape(-1)
        out[renamed] = value
    return out
