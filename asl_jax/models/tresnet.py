"""TResNet-M/L (Ridnik et al., 2021) in Flax Linen, equal to timm's ``tresnet_m``/``tresnet_l``.

The backbone of the ASL paper. Space-to-depth stem (4×4 blocks to channels), anti-aliased
downsampling (a fixed 3×3 binomial blur with stride 2 after the strided convolutions), squeeze-and-
excitation in the first three stages, batch norm followed by leaky ReLU (slope 1e-2 in the stem,
1e-3 in the blocks), batch-norm epsilon 1e-5 and momentum 0.1 in PyTorch's convention (0.9 here).
Inputs are images in [0, 1] without mean/std normalisation, as the official ASL code feeds them.

``torch_to_flax``/``flax_to_torch`` convert timm's state dict (and the older InPlaceABN-era names
of the official TResNet/ASL repositories) to Flax variables and back.
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

from asl_jax.models.heads import classifier_head
from asl_jax.models.layers import SqueezeExcite
from asl_jax.models.normalization import normalize

#: The torch name prefix of the classifier in timm's TResNet.
TORCH_HEAD = "head.fc"

_STEM_SLOPE = 1e-2
_BLOCK_SLOPE = 1e-3
# [1, 2, 1] ⊗ [1, 2, 1] / 16: the anti-aliasing blur.
_BLUR = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]).astype(np.float32) / 16.0


def space_to_depth(x: jax.Array, block: int = 4) -> jax.Array:
    """``[B, H, W, C] -> [B, H/b, W/b, b*b*C]`` in timm's channel order (row offset, column, C)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // block, block, w // block, block, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // block, w // block, block * block * c)


def blur_pool(x: jax.Array) -> jax.Array:
    """Reflect-padded 3×3 binomial blur with stride 2, per channel (timm's ``BlurPool2d``)."""
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    channels = x.shape[-1]
    kernel = jnp.tile(jnp.asarray(_BLUR, x.dtype)[:, :, None, None], (1, 1, 1, channels))
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(2, 2),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )


def avg_pool_ceil(x: jax.Array) -> jax.Array:
    """2×2 average pool, stride 2, ceil mode, padding not counted (the shortcut downsampling)."""
    _, h, w, _ = x.shape
    pad = ((0, 0), (0, h % 2), (0, w % 2), (0, 0))
    counts = np.pad(np.ones((1, h, w, 1), np.float32), pad)
    counts = counts.reshape(1, -1, 2, counts.shape[2] // 2, 2, 1).sum(axis=(2, 4))
    x = jnp.pad(x, pad)
    b, hp, wp, c = x.shape
    x = x.reshape(b, hp // 2, 2, wp // 2, 2, c).sum(axis=(2, 4))
    return x / jnp.asarray(counts, x.dtype)


class ConvNormAct(nn.Module):
    """Convolution (no bias), batch norm, optional leaky ReLU, optional anti-aliased stride 2."""

    features: int
    kernel_size: int = 3
    slope: float | None = _BLOCK_SLOPE
    downsample: bool = False
    train: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, p = self.kernel_size, self.kernel_size // 2
        x = nn.Conv(
            self.features, (k, k), padding=((p, p), (p, p)), use_bias=False, dtype=self.dtype,
            name="conv",
        )(x)  # fmt: skip
        x = nn.BatchNorm(
            use_running_average=not self.train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
            name="bn",
        )(x)  # fmt: skip
        if self.slope is not None:
            x = nn.leaky_relu(x, self.slope)
        return blur_pool(x) if self.downsample else x


class TResNetBlock(nn.Module):
    """A basic (two 3×3) or bottleneck (1×1, 3×3, 1×1 ×4) TResNet block."""

    planes: int
    bottleneck: bool
    stride: int = 1
    use_se: bool = True
    train: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cna = partial(ConvNormAct, train=self.train, dtype=self.dtype)
        out_features = self.planes * (4 if self.bottleneck else 1)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != out_features:
            pooled = avg_pool_ceil(x) if self.stride == 2 else x
            shortcut = cna(out_features, 1, slope=None, name="downsample")(pooled)
        down = self.stride == 2
        if self.bottleneck:
            y = cna(self.planes, 1, name="conv1")(x)
            y = cna(self.planes, 3, downsample=down, name="conv2")(y)
            if self.use_se:
                y = SqueezeExcite(max(out_features // 8, 64), self.dtype, name="se")(y)
            y = cna(out_features, 1, slope=None, name="conv3")(y)
        else:
            y = cna(self.planes, 3, downsample=down, name="conv1")(x)
            y = cna(self.planes, 3, slope=None, name="conv2")(y)
            if self.use_se:
                y = SqueezeExcite(max(out_features // 4, 64), self.dtype, name="se")(y)
        return nn.relu(y + shortcut)


class TResNet(nn.Module):
    """TResNet: basic blocks in stages 1-2, bottlenecks in 3-4, SE in stages 1-3.

    Attributes:
      stage_sizes: blocks per stage (M: 3, 4, 11, 3; L: 4, 5, 18, 3).
      num_classes: number of output logits.
      width: channels of the first stage (M: 64; L: 76 = int(64 × 1.2)).
      normalization: a name of :data:`~asl_jax.models.normalization.NORMALIZATIONS`; ``none``
        (inputs in [0, 1] as given) is what TResNet weights of the official ASL code expect.
      dtype: compute dtype; parameters are float32 and logits float32.
      classifier: the head on the features, a name of
        :data:`~asl_jax.models.heads.HEAD_NAMES` (``linear`` or ``ml_decoder``).
      ml_decoder_groups: ML-Decoder's number of queries (0 = ``min(num_classes, 100)``).
    """

    stage_sizes: Sequence[int]
    num_classes: int
    width: int = 64
    normalization: str = "none"
    dtype: Any = jnp.float32
    classifier: str = "linear"
    ml_decoder_groups: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if x.ndim != 4 or x.shape[1] % 4 or x.shape[2] % 4:
            raise ValueError(
                f"TResNet input shape {x.shape}: expected [B, H, W, C] with H and W multiples of 4"
            )
        x = space_to_depth(normalize(x, self.normalization)).astype(self.dtype)
        x = ConvNormAct(
            self.width, 3, slope=_STEM_SLOPE, train=train, dtype=self.dtype, name="conv1"
        )(x)
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = TResNetBlock(
                    self.width * 2**i,
                    bottleneck=i >= 2,
                    stride=2 if i > 0 and j == 0 else 1,
                    use_se=i < 3,
                    train=train,
                    dtype=self.dtype,
                    name=f"layer{i + 1}_{j}",
                )(x)
        return classifier_head(self, x, train=train, name="head")


TResNetM = partial(TResNet, stage_sizes=(3, 4, 11, 3), width=64)
TResNetL = partial(TResNet, stage_sizes=(4, 5, 18, 3), width=76)

# Official TResNet/ASL names (conv2d_ABN = Sequential(conv, InPlaceABN), anti-aliased convs
# wrapped once more) -> timm names; the same rewriting as timm's TResNet checkpoint filter.
_LEGACY_RULES = (
    (r"conv(\d+)\.0\.0\.", r"conv\1.conv."),
    (r"conv(\d+)\.0\.1\.", r"conv\1.bn."),
    (r"conv(\d+)\.0\.", r"conv\1.conv."),
    (r"conv(\d+)\.1\.", r"conv\1.bn."),
    (r"downsample\.(\d+)\.0\.", r"downsample.\1.conv."),
    (r"downsample\.(\d+)\.1\.", r"downsample.\1.bn."),
)
_BN_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def remap_legacy_keys(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """timm names for a state dict of the official TResNet/ASL code (InPlaceABN era).

    Checkpoints of that code are ``{"model": state_dict, ...}``; the wrapper is removed. Its
    InPlaceABN layers use ``|weight| + 1e-5`` as the scale, converted here as timm does. A state
    dict that already has timm's names is returned unchanged.
    """
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), Mapping):
            state_dict = state_dict[wrapper]
    if "body.conv1.conv.weight" in state_dict:
        return {k: np.asarray(v) for k, v in state_dict.items()}
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _LEGACY_RULES:
            key = re.sub(pattern, repl, key)
        value = np.asarray(value)
        if key.endswith("bn.weight"):
            value = np.abs(value) + 1e-5
        out[key] = value
    return out


def _flax_path(key: str) -> tuple[str, tuple[str, ...]]:
    """(collection, path) of the Flax variable for a timm TResNet state-dict key."""
    if key == f"{TORCH_HEAD}.weight" or key == f"{TORCH_HEAD}.bias":
        return "params", ("head", "kernel" if key.endswith("weight") else "bias")
    m = re.fullmatch(r"body\.(conv1|layer\d+\.\d+\.(?:conv\d|downsample\.1|se))\.(.+)", key)
    if m is None:
        raise ValueError(f"TResNet state dict: unexpected key {key!r}")
    module = m.group(1).replace("downsample.1", "downsample")
    module = re.sub(r"^layer(\d+)\.(\d+)", r"layer\1_\2", module).split(".")
    rest = m.group(2)
    if rest.startswith("bn.") and rest[3:] in _BN_LEAVES:
        leaf = _BN_LEAVES[rest[3:]]
        return ("batch_stats" if leaf in ("mean", "var") else "params"), (*module, "bn", leaf)
    if rest in ("conv.weight", "fc1.weight", "fc2.weight", "fc1.bias", "fc2.bias"):
        sub, leaf = rest.split(".")
        return "params", (*module, sub, "kernel" if leaf == "weight" else "bias")
    raise ValueError(f"TResNet state dict: unexpected key {key!r}")


def _to_flax_leaf(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # OIHW -> HWIO
        return value.transpose(2, 3, 1, 0)
    return value.T if value.ndim == 2 else value


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def torch_to_flax(state_dict: Mapping[str, Any]) -> dict[str, dict]:
    """Flax variables ``{"params", "batch_stats"}`` of a timm TResNet-M/L state dict (with head).

    Accepts timm's names and the official TResNet/ASL names (see :func:`remap_legacy_keys`);
    ``num_batches_tracked`` buffers are ignored.
    """
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for key, value in remap_legacy_keys(state_dict).items():
        if key.endswith("num_batches_tracked"):
            continue
        collection, path = _flax_path(key)
        _set(variables[collection], path, _to_flax_leaf(np.asarray(value, np.float32)))
    return variables


_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_STAT_NAMES = {"mean": "running_mean", "var": "running_var"}


def _torch_key(collection: str, path: tuple[str, ...]) -> str:
    """The timm state-dict key of a Flax variable (the inverse of :func:`_flax_path`)."""
    if path[0] == "head":
        return f"{TORCH_HEAD}.{_LEAF_NAMES[path[1]]}"
    names = list(path[:-1])
    names[0] = re.sub(r"^layer(\d+)_(\d+)$", r"layer\1.\2", names[0])
    names = ["downsample.1" if n == "downsample" else n for n in names]
    leaf = _STAT_NAMES[path[-1]] if collection == "batch_stats" else _LEAF_NAMES[path[-1]]
    return "body." + ".".join([*names, leaf])


def flax_to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """timm's TResNet state dict of Flax variables (timm names and shapes, with the head).

    ``num_batches_tracked`` buffers are left out (torch's batch norm loads without them).
    """
    out = {}
    for collection in ("params", "batch_stats"):
        flat = jax.tree_util.tree_flatten_with_path(variables.get(collection, {}))[0]
        for key_path, value in flat:
            path = tuple(str(k.key) for k in key_path)
            value = np.asarray(value, np.float32)
            if value.ndim == 4:  # HWIO -> OIHW
                value = value.transpose(3, 2, 0, 1)
            elif value.ndim == 2:
                value = value.T
            out[_torch_key(collection, path)] = value
    return out
