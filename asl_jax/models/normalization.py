"""Input normalisations: how a model maps float32 images in ``[0, 1]`` to its first layer's input.

A pretrained network only works on inputs scaled as during its pre-training, so the
normalisation is an attribute of every model, chosen by name (``model.normalization``) and, for
pretrained weights, from where the weights come from (see :mod:`asl_jax.models.pretrained`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# NumPy, not jnp: creating a device array at import would initialise the JAX backend before
# ``jax.distributed.initialize`` can run.
#: ``name -> (per-channel mean, per-channel std)``; the model computes ``(x - mean) / std``.
NORMALIZATIONS: dict[str, tuple[np.ndarray, np.ndarray]] = {
    # The statistics of ImageNet photos: torchvision's weights (and most timm ones) expect them.
    "imagenet": (
        np.array([0.485, 0.456, 0.406], np.float32),
        np.array([0.229, 0.224, 0.225], np.float32),
    ),
    # [-1, 1]: several timm weights (ViT AugReg, Inception) expect this.
    "inception": (np.full(3, 0.5, np.float32), np.full(3, 0.5, np.float32)),
    # [0, 1] as given: TResNet weights of the official ASL code expect this.
    "none": (np.zeros(3, np.float32), np.ones(3, np.float32)),
    # [-2, 2]: the small CNN's own scaling (generated data has no meaningful channel statistics).
    "centered": (np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)),
}
NORMALIZATION_NAMES = tuple(NORMALIZATIONS)


def normalize(x: jax.Array, name: str, dtype: Any = jnp.float32) -> jax.Array:
    """``(x - mean) / std`` of the normalisation ``name``, computed in float32, cast to ``dtype``.

    Examples:
      >>> normalize(jnp.ones((1, 2, 2, 3)), "inception")[0, 0, 0]
      Array([1., 1., 1.], dtype=float32)
    """
    if name not in NORMALIZATIONS:
        raise ValueError(
            f"model.normalization={name!r}: expected one of {', '.join(NORMALIZATION_NAMES)}"
        )
    mean, std = NORMALIZATIONS[name]
    return ((jnp.asarray(x, jnp.float32) - mean) / std).astype(dtype)
