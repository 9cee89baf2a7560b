"""Classifier heads on a backbone's features: a linear layer, or ML-Decoder.

``model.head`` picks one for every backbone:

- ``linear``: global average pooling of a CNN's feature map (a ViT's class token) and one dense
  layer, the classifier each backbone was published with;
- ``ml_decoder``: ML-Decoder (Ridnik et al., "ML-Decoder: Scalable and Versatile Classification
  Head", WACV 2023, arXiv:2111.12933), an attention-based head that reads every spatial position
  (every token) instead of their average. Its parts, as published:

  1. the features ``[B, N, C]`` (a feature map ``[B, H, W, C]`` is flattened) are projected to
     768 channels and passed through a ReLU: the *memory*;
  2. ``G = min(K, 100)`` fixed random query vectors (``query_embed``, never trained, not even
     decayed) enter one transformer decoder layer without self-attention: the query is added to
     itself (the residual of the removed self-attention) and layer-normalised, then cross-attends
     to the memory (8 heads), then a 2048-wide ReLU feed-forward, each with a residual, layer
     norm (eps 1e-5) and dropout 0.1 in training;
  3. a *group fully-connected* layer maps each of the ``G`` decoded queries to its
     ``ceil(K / G)`` classes (``duplicate_pooling`` ``[G, 768, ceil(K / G)]``); the first ``K``
     outputs plus a bias are the logits.

The variables are named after the PyTorch modules (``embed_standart``, ``query_embed``,
``duplicate_pooling``, ``layers_0/multihead_attn``, …), so :func:`ml_decoder_to_torch` and
:func:`ml_decoder_to_flax` convert them by name to timm's ``MLDecoder`` layout and back;
:func:`rename_official_ml_decoder` reads the official ML-Decoder code's names
(``<head>.decoder.embed_standart``, …).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from asl_jax.models.torch_layout import TorchLayout

#: The values of ``model.head``.
HEAD_NAMES = ("linear", "ml_decoder")
#: ML-Decoder's default (and largest default) number of query groups.
DEFAULT_GROUPS = 100
#: The parameter that is a constant: ML-Decoder's query embeddings (optimizer, weight decay and
#: EMA leave every parameter of this name as it was initialised or loaded).
FROZEN_PARAMETER = "query_embed"


def ml_decoder_groups(num_classes: int, groups: int = 0) -> int:
    """The number of ML-Decoder queries: ``min(K, groups)``, ``groups = 0`` meaning 100.

    Examples:
      >>> ml_decoder_groups(80), ml_decoder_groups(1000), ml_decoder_groups(1000, 50)
      (80, 100, 50)
    """
    if not isinstance(groups, int) or groups < 0:
        raise ValueError(f"model.ml_decoder_groups={groups!r}: expected 0 (default) or a count")
    return min(num_classes, groups or DEFAULT_GROUPS)


class _CrossAttention(nn.Module):
    """Multi-head attention of queries to a memory, with torch's fused ``in_proj`` weights."""

    num_heads: int
    dropout: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, query: jax.Array, memory: jax.Array, *, train: bool) -> jax.Array:
        b, g, d = query.shape
        head_dim = d // self.num_heads
        kernel = self.param("in_proj_kernel", nn.initializers.xavier_uniform(), (d, 3 * d))
        bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,))
        kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
        q = query @ kernel[:, :d] + bias[:d]
        k = memory @ kernel[:, d : 2 * d] + bias[d : 2 * d]
        v = memory @ kernel[:, 2 * d :] + bias[2 * d :]
        q = q.reshape(b, g, self.num_heads, head_dim)
        k = k.reshape(b, -1, self.num_heads, head_dim)
        v = v.reshape(b, -1, self.num_heads, head_dim)
        logits = jnp.einsum("bqhc,bkhc->bhqk", q * head_dim**-0.5, k)
        # Softmax in float32: bfloat16 exponentials lose too much precision.
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)
        out = jnp.einsum("bhqk,bkhc->bqhc", attn, v).reshape(b, g, d)
        return nn.Dense(d, dtype=self.dtype, name="out_proj")(out)


class _DecoderLayer(nn.Module):
    """ML-Decoder's transformer decoder layer: no self-attention, post-norm (see the module)."""

    feedforward: int
    num_heads: int
    dropout: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, query: jax.Array, memory: jax.Array, *, train: bool) -> jax.Array:
        def drop(x: jax.Array) -> jax.Array:
            return nn.Dropout(self.dropout, deterministic=not train)(x)

        def norm(name: str) -> nn.LayerNorm:
            return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)

        x = norm("norm1")(query + drop(query))  # what is left of the self-attention block
        attended = _CrossAttention(self.num_heads, self.dropout, self.dtype, name="multihead_attn")
        x = norm("norm2")(x + drop(attended(x, memory, train=train)))
        y = nn.relu(nn.Dense(self.feedforward, dtype=self.dtype, name="linear1")(x))
        y = nn.Dense(x.shape[-1], dtype=self.dtype, name="linear2")(drop(y))
        return norm("norm3")(x + drop(y))


class MLDecoder(nn.Module):
    """The ML-Decoder classification head (see the module docstring).

    Attributes:
      num_classes: number of output logits ``K``.
      groups: number of queries (0 = ``min(K, 100)``; more than ``K`` is cut to ``K``).
      embedding: width of the decoder (768 as published).
      feedforward: width of the decoder's feed-forward layer (2048).
      num_heads: attention heads (8).
      dropout: dropout rate in training (0.1); needs the ``dropout`` PRNG stream then.
      dtype: compute dtype; parameters are float32.

    Examples:
      >>> head = MLDecoder(num_classes=20)
      >>> v = head.init(jax.random.key(0), jnp.zeros((1, 7, 7, 64)), train=False)
      >>> v["params"]["query_embed"].shape, v["params"]["duplicate_pooling"].shape
      ((20, 768), (20, 768, 1))
    """

    num_classes: int
    groups: int = 0
    embedding: int = 768
    feedforward: int = 2048
    num_heads: int = 8
    dropout: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
        if features.ndim == 4:  # a feature map: every position is a token
            features = features.reshape(features.shape[0], -1, features.shape[-1])
        if features.ndim != 3:
            raise ValueError(f"ML-Decoder features {features.shape}: expected [B, N, C] or 4-D")
        groups = ml_decoder_groups(self.num_classes, self.groups)
        per_group = math.ceil(self.num_classes / groups)
        d = self.embedding
        memory = nn.relu(nn.Dense(d, dtype=self.dtype, name="embed_standart")(features))
        # Fixed random queries (torch's nn.Embedding initialisation); no gradient reaches them.
        queries = self.param(FROZEN_PARAMETER, nn.initializers.normal(1.0), (groups, d))
        queries = jax.lax.stop_gradient(queries).astype(self.dtype)
        x = jnp.broadcast_to(queries, (features.shape[0], groups, d))
        x = _DecoderLayer(
            self.feedforward, self.num_heads, self.dropout, self.dtype, name="layers_0"
        )(x, memory, train=train)
        pooling = self.param(
            "duplicate_pooling",
            nn.initializers.variance_scaling(1.0, "fan_avg", "normal", in_axis=-2, out_axis=-1),
            (groups, d, per_group),
        )
        bias = self.param("duplicate_pooling_bias", nn.initializers.zeros, (self.num_classes,))
        logits = jnp.einsum("bgd,gdf->bgf", x, pooling.astype(self.dtype))
        logits = logits.reshape(x.shape[0], groups * per_group)[:, : self.num_classes]
        return logits + bias.astype(self.dtype)


def classifier_head(
    model: nn.Module,
    features: jax.Array,
    *,
    train: bool,
    pool: Callable[[jax.Array], jax.Array] | None = None,
    name: str | None = None,
) -> jax.Array:
    """The logits of ``model``'s head on its backbone's ``features`` (call in its compact body).

    The head and its settings are the model's fields ``classifier`` (a name of
    :data:`HEAD_NAMES`), ``num_classes``, ``ml_decoder_groups`` (0 = ``min(K, 100)``) and
    ``dtype``: every backbone declares them, and this is where they are read.

    Args:
      model: the backbone module calling it.
      features: ``[B, H, W, C]`` feature map or ``[B, N, C]`` tokens.
      train: training mode (ML-Decoder's dropout).
      pool: ``features -> [B, C]`` for the linear head; None = :func:`global_average` (a CNN's
        feature map; a ViT passes its class token).
      name: the head module's name (the torch layout's: ``fc``, ``head``); None = Flax's own.

    Returns:
      float32 logits ``[B, num_classes]``.
    """
    head, dtype = model.classifier, model.dtype
    if head == "linear":
        pooled = (pool or global_average)(features)
        logits = nn.Dense(model.num_classes, dtype=dtype, name=name)(pooled)
    elif head == "ml_decoder":
        decoder = MLDecoder(model.num_classes, model.ml_decoder_groups, dtype=dtype, name=name)
        logits = decoder(features, train=train)
    else:
        raise ValueError(f"model.head={head!r}: expected one of {', '.join(HEAD_NAMES)}")
    return logits.astype(jnp.float32)


def global_average(features: jax.Array) -> jax.Array:
    """``[B, H, W, C] -> [B, C]``: the linear head's pooling of a CNN feature map."""
    return jnp.mean(features, axis=(1, 2))


def frozen_mask(params: Any) -> Any:
    """``params -> bools``: True for the parameters that never change (:data:`FROZEN_PARAMETER`).

    Examples:
      >>> frozen_mask({"fc": {"query_embed": 0.0, "duplicate_pooling": 0.0}})
      {'fc': {'duplicate_pooling': False, 'query_embed': True}}
    """

    def is_frozen(path: tuple[Any, ...], leaf: Any) -> bool:
        del leaf
        return any(str(getattr(p, "key", p)) == FROZEN_PARAMETER for p in path)

    return jax.tree_util.tree_map_with_path(is_frozen, params)


def has_ml_decoder(params: Mapping[str, Any], flax_head: str) -> bool:
    """Whether the head module ``flax_head`` of ``params`` is an ML-Decoder."""
    head = params.get(flax_head, {})
    return isinstance(head, Mapping) and FROZEN_PARAMETER in head


# Flax path (``/``-joined) <-> torch name (``.``-joined) inside the head, for the entries whose
# names differ beyond kernel/scale -> weight.
_LAYER_FLAX, _LAYER_TORCH = "layers_0/", "decoder.layers.0."
_TORCH_LEAVES = {
    "query_embed": "query_embed.weight",
    "multihead_attn/in_proj_kernel": "multihead_attn.in_proj_weight",
    "multihead_attn/in_proj_bias": "multihead_attn.in_proj_bias",
}


def _torch_name(flax_path: str) -> str:
    inner = flax_path.removeprefix(_LAYER_FLAX)
    layer = _LAYER_TORCH if inner != flax_path else ""
    if inner in _TORCH_LEAVES:
        return layer + _TORCH_LEAVES[inner]
    module, _, leaf = inner.rpartition("/")
    if not module:  # duplicate_pooling, duplicate_pooling_bias: bare parameters
        return layer + leaf
    leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
    return layer + module.replace("/", ".") + "." + leaf


def _flax_path(torch_name: str) -> str:
    inner = torch_name.removeprefix(_LAYER_TORCH)
    layer = _LAYER_FLAX if inner != torch_name else ""
    for flax, torch in _TORCH_LEAVES.items():
        if inner == torch:
            return layer + flax
    module, _, leaf = inner.rpartition(".")
    if not module:
        return layer + leaf
    if leaf == "weight":
        leaf = "scale" if module.startswith("norm") else "kernel"
    return layer + module.replace(".", "/") + "/" + leaf


#: Every Flax path of an ML-Decoder's parameters.
_FLAX_PATH = re.compile(
    r"embed_standart/(kernel|bias)|query_embed|duplicate_pooling(_bias)?"
    r"|layers_0/(norm[123]/(scale|bias)|linear[12]/(kernel|bias)"
    r"|multihead_attn/(in_proj_kernel|in_proj_bias|out_proj/(kernel|bias)))"
)


def _transposed(flax_path: str) -> bool:
    return flax_path.endswith("kernel")


def ml_decoder_to_torch(head_params: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
    """timm's ``MLDecoder`` state-dict entries (under ``prefix``) of an ML-Decoder's parameters.

    Examples:
      >>> v = MLDecoder(3).init(jax.random.key(0), jnp.zeros((1, 2, 2, 8)), train=False)
      >>> sorted(ml_decoder_to_torch(v["params"], "fc"))[:2]
      ['fc.decoder.layers.0.linear1.bias', 'fc.decoder.layers.0.linear1.weight']
    """
    out = {}
    for key_path, value in jax.tree_util.tree_flatten_with_path(dict(head_params))[0]:
        path = "/".join(str(k.key) for k in key_path)
        value = np.asarray(value, np.float32)
        out[f"{prefix}.{_torch_name(path)}"] = value.T if _transposed(path) else value
    return out


def ml_decoder_to_flax(entries: Mapping[str, np.ndarray], prefix: str) -> dict[str, Any]:
    """The ML-Decoder parameters of timm-named state-dict ``entries`` under ``prefix``."""
    params: dict[str, Any] = {}
    for key, value in entries.items():
        if not key.startswith(prefix + "."):
            raise ValueError(f"ML-Decoder state dict: {key!r} is not under {prefix!r}")
        inner = key[len(prefix) + 1 :]
        path = _flax_path(inner)
        if not _FLAX_PATH.fullmatch(path) or _torch_name(path) != inner:
            raise ValueError(f"ML-Decoder state dict: unexpected key {key!r}")
        value = np.asarray(value, np.float32)
        tree = params
        *modules, leaf = path.split("/")
        for module in modules:
            tree = tree.setdefault(module, {})
        tree[leaf] = value.T if _transposed(path) else value
    return params


_OFFICIAL = re.compile(r"decoder\.(embed_standart\.|query_embed\.|duplicate_pooling)")


def rename_official_ml_decoder(
    state_dict: Mapping[str, np.ndarray], prefix: str
) -> dict[str, np.ndarray]:
    """timm's names for the entries of the official ML-Decoder code under ``prefix``: it keeps
    the projection, queries and group FC inside the decoder (``head.decoder.query_embed.weight``
    is timm's ``head.query_embed.weight``); other entries are returned as they are."""
    out = {}
    start = prefix + "."
    for key, value in state_dict.items():
        if key.startswith(start) and _OFFICIAL.match(key[len(start) :]):
            key = start + key[len(start) + len("decoder.") :]
        out[key] = value
    return out


def ml_decoder_layout(layout: TorchLayout) -> TorchLayout:
    """``layout`` (a backbone's torch layout with its linear head) with an ML-Decoder head.

    The head's entries sit under the layout's ``ml_decoder_head`` prefix (timm's
    ``add_ml_decoder_head``: ``fc`` for a ResNet, ``head`` for TResNet and ViT) and are converted
    here; the backbone's converters see the rest. The official ML-Decoder code's names are read
    too (:func:`rename_official_ml_decoder`).
    """
    prefix = layout.ml_decoder_head or layout.head
    # The ML-Decoder module is named as its torch prefix when the layout names one.
    flax_head = layout.ml_decoder_head or layout.flax_head or layout.head

    def split(state_dict: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
        head = {k: v for k, v in state_dict.items() if k.startswith(prefix + ".")}
        return {k: v for k, v in state_dict.items() if k not in head}, head

    def to_flax(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
        body, head = split(state_dict)
        variables = layout.to_flax(body)
        variables["params"][flax_head] = ml_decoder_to_flax(head, prefix)
        return variables

    def to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
        params = dict(variables["params"])
        head = params.pop(flax_head)
        out = layout.to_torch({**variables, "params": params})
        out.update(ml_decoder_to_torch(head, prefix))
        return out

    def rename(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if layout.rename is not None:
            state_dict = layout.rename(state_dict)
        return rename_official_ml_decoder(state_dict, prefix)

    return dataclasses.replace(
        layout, to_flax=to_flax, to_torch=to_torch, head=prefix, flax_head=flax_head, rename=rename
    )
