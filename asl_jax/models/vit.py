"""Vision Transformer ViT-B/16 (Dosovitskiy et al., 2021) in Flax Linen, equal to timm's model.

``vit_b16`` is timm's ``vit_base_patch16_224``: 16×16 patch embedding, class token, learned
position embeddings, 12 pre-norm blocks (LayerNorm eps 1e-6, 12-head attention, MLP with exact
erf GELU), final LayerNorm and a linear head on the class token. The position embeddings are
resized by antialiased bicubic interpolation (timm's ``resample_abs_pos_embed`` default) when the
image grid differs from the stored one, at load time (:func:`resize_pos_embed`) or in the forward
pass, so 32 px or 384 px images work with 224 px weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from asl_jax.models.heads import classifier_head
from asl_jax.models.normalization import normalize

#: The torch name prefix of the classifier in timm's VisionTransformer.
TORCH_HEAD = "head"

# timm's default weights of ``vit_base_patch16_224`` (augreg, original in21k) expect mean =
# std = 0.5 ("inception"); DINO/MAE weights expect ImageNet statistics ("imagenet").


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    inner = ((a + 2) * x - (a + 3)) * x * x + 1
    outer = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, inner, np.where(x < 2, outer, 0.0))


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights of antialiased bicubic resizing (half-pixel centres).

    The kernel widens by the scale when shrinking and the weights are renormalised at the borders,
    as PyTorch's ``interpolate(mode="bicubic", antialias=True)`` computes them.
    """
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    weights = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo = max(int(centre - 2.0 * stretch + 0.5), 0)
        hi = min(int(centre + 2.0 * stretch + 0.5), n_in)
        k = _cubic((np.arange(lo, hi) - centre + 0.5) / stretch)
        weights[i, lo:hi] = k / k.sum()
    return weights.astype(np.float32)


def resize_pos_embed(
    pos_embed: Any, grid: tuple[int, int], old_grid: tuple[int, int] | None = None
) -> Any:
    """Position embeddings ``[1, 1 + h*w, D]`` resized to ``grid`` (the class token is kept).

    NumPy in, NumPy out (load time); a JAX array (or tracer) in, a JAX array out (forward pass).
    ``old_grid`` defaults to the square grid of the stored tokens.
    """
    num_tokens = pos_embed.shape[1] - 1
    if old_grid is None:
        side = round(num_tokens**0.5)
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != num_tokens:
        raise ValueError(f"pos_embed with {num_tokens} patch tokens: not a {old_grid} grid")
    if tuple(grid) == tuple(old_grid):
        return pos_embed
    xp = np if isinstance(pos_embed, np.ndarray) else jnp
    cls, patches = pos_embed[:, :1], pos_embed[0, 1:].reshape(*old_grid, -1)
    rows, cols = _resize_matrix(old_grid[0], grid[0]), _resize_matrix(old_grid[1], grid[1])
    patches = xp.einsum("ih,hwd,jw->ijd", rows, patches.astype(xp.float32), cols)
    patches = patches.reshape(1, grid[0] * grid[1], -1).astype(pos_embed.dtype)
    return xp.concatenate([cls, patches], axis=1)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm's layout)."""

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        head_dim = d // self.num_heads
        qkv = nn.Dense(3 * d, dtype=self.dtype, name="qkv")(x)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
        logits = jnp.einsum("bhqc,bhkc->bhqk", q * head_dim**-0.5, k)
        # Softmax in float32: bfloat16 exponentials lose too much precision.
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bhkc->bqhc", attn, v).reshape(b, n, d)
        return nn.Dense(d, dtype=self.dtype, name="proj")(out)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        norm = partial(nn.LayerNorm, epsilon=1e-6, dtype=self.dtype)
        x = x + Attention(self.num_heads, self.dtype, name="attn")(norm(name="norm1")(x))
        y = norm(name="norm2")(x)
        y = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(y)
        y = nn.gelu(y, approximate=False)
        return x + nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(y)


class VisionTransformer(nn.Module):
    """ViT classifier on the class token.

    Attributes:
      num_classes: number of output logits.
      hidden_size: token width (768 for ViT-B); must be a multiple of ``num_heads``.
      depth: number of blocks.
      num_heads: attention heads.
      mlp_ratio: MLP width / hidden size.
      patch_size: side of the square patches; image sides must be multiples of it.
      img_size: the image side the position-embedding parameter is stored for (224: 14×14 grid).
        Other image sizes resize it in the forward pass.
      normalization: a name of :data:`~asl_jax.models.normalization.NORMALIZATIONS` applied to
        the [0, 1] input.
      dtype: compute dtype; parameters are float32 and logits float32.
      classifier: the head on the tokens (linear: on the class token; ML-Decoder: on all of
        them), a name of :data:`~asl_jax.models.heads.HEAD_NAMES` (``linear`` or ``ml_decoder``).
      ml_decoder_groups: ML-Decoder's number of queries (0 = ``min(num_classes, 100)``).
    """

    num_classes: int
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    img_size: int = 224
    normalization: str = "inception"
    dtype: Any = jnp.float32
    classifier: str = "linear"
    ml_decoder_groups: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        # No dropout or batch norm in the backbone: ``train`` reaches only ML-Decoder's dropout.
        self._check(x)
        x = normalize(x, self.normalization, self.dtype)
        p, d = self.patch_size, self.hidden_size
        x = nn.Conv(d, (p, p), (p, p), padding="VALID", dtype=self.dtype, name="patch_embed")(x)
        b, gh, gw, _ = x.shape
        cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d))
        side = self.img_size // p
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, 1 + side * side, d))
        x = jnp.concatenate(
            [jnp.broadcast_to(cls, (b, 1, d)).astype(self.dtype), x.reshape(b, -1, d)], 1
        )
        x = x + resize_pos_embed(pos, (gh, gw)).astype(self.dtype)
        mlp_dim = int(d * self.mlp_ratio)
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, mlp_dim, self.dtype, name=f"blocks_{i}")(x)
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
        return classifier_head(self, x, train=train, pool=lambda tokens: tokens[:, 0], name="head")

    def _check(self, x: jax.Array) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size}: expected a multiple of num_heads={self.num_heads}"
            )
        p = self.patch_size
        if x.ndim != 4 or x.shape[1] % p or x.shape[2] % p:
            raise ValueError(
                f"ViT input shape {x.shape}: expected [B, H, W, C] with H and W multiples of {p}"
            )


ViTB16 = partial(VisionTransformer, hidden_size=768, depth=12, num_heads=12, patch_size=16)


_KEY_PATTERN = (
    r"(patch_embed\.proj|norm|head"
    r"|blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2))\.(weight|bias)"
)


def _flax_path(key: str) -> tuple[str, ...]:
    """The Flax parameter path of a timm ViT state-dict key."""
    if key in ("cls_token", "pos_embed"):
        return (key,)
    m = re.fullmatch(_KEY_PATTERN, key)
    if m is None:
        raise ValueError(f"ViT state dict: unexpected key {key!r}")
    module, block, layer, leaf = m.groups()
    if block is not None:
        module = (f"blocks_{block}", *layer.replace("mlp.", "").split("."))
    else:
        module = ("patch_embed",) if module == "patch_embed.proj" else (module,)
    if leaf == "bias":
        return (*module, "bias")
    return (*module, "scale" if module[-1].startswith("norm") else "kernel")


def torch_to_flax(state_dict: Mapping[str, Any]) -> dict[str, dict]:
    """Flax variables ``{"params", "batch_stats": {}}`` of a timm ViT state dict (with head).

    The position embeddings keep the checkpoint's grid; a model whose ``img_size`` gives another
    grid needs :func:`resize_pos_embed` first (a model with the default ``img_size`` resizes them in
    the forward pass).
    """
    params: dict = {}
    for key, value in state_dict.items():
        value = np.asarray(value, np.float32)
        if value.ndim == 4:  # OIHW -> HWIO
            value = value.transpose(2, 3, 1, 0)
        elif value.ndim == 2:
            value = value.T
        tree = params
        path = _flax_path(key)
        for name in path[:-1]:
            tree = tree.setdefault(name, {})
        tree[path[-1]] = value
    return {"params": params, "batch_stats": {}}


def _torch_key(path: tuple[str, ...]) -> str:
    if path in (("cls_token",), ("pos_embed",)):
        return path[0]
    leaf = "bias" if path[-1] == "bias" else "weight"
    first = path[0]
    if first == "patch_embed":
        return f"patch_embed.proj.{leaf}"
    if first.startswith("blocks_"):
        layer = path[1] if path[1].startswith("norm") else None
        layer = layer or (f"mlp.{path[1]}" if path[1].startswith("fc") else f"attn.{path[2]}")
        return f"blocks.{first[len('blocks_') :]}.{layer}.{leaf}"
    return f"{first}.{leaf}"


def flax_to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """timm's ViT state dict (names and torch shapes) of Flax variables."""
    out = {}
    for key_path, value in jax.tree_util.tree_flatten_with_path(variables["params"])[0]:
        path = tuple(str(k.key) for k in key_path)
        value = np.asarray(value, np.float32)
        if value.ndim == 4 and path[-1] == "kernel":  # HWIO -> OIHW
            value = value.transpose(3, 2, 0, 1)
        elif value.ndim == 2:
            value = value.T
        out[_torch_key(path)] = value
    return out
