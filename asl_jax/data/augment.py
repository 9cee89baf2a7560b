"""On-device augmentation in the spirit of the official ASL recipe (flip, Cutout, RandAugment).

The host pipeline ships uint8 NHWC images; these functions run **inside the jitted train step**,
so augmentation costs no host time, and its randomness comes from the train state's key (split
per step), which makes a resumed run draw exactly the same augmentations as an uninterrupted one.

Every example gets its own key (``jax.random.split(rng, batch)``), so the augmentation of an
example does not depend on how the batch is sharded across devices.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp

from asl_jax.config_fields import ConfigBlock, Effect, interval, option

# Augmentation runs inside the jitted train step: every field changes the compiled program.
PROGRAM = Effect.PROGRAM

#: RandAugment-style magnitudes (light: the objects of small images must stay recognisable).
BRIGHTNESS_DELTA = 0.25  # factor in [1 - d, 1 + d]
CONTRAST_DELTA = 0.3
SATURATION_DELTA = 0.4
TRANSLATE_FRACTION = 0.125  # up to 1/8 of the side (4 px at 32 px)
OP_PROBABILITY = 0.5  # each RandAugment-style op is applied independently with this probability


@dataclasses.dataclass(frozen=True)
class AugmentConfig(ConfigBlock):
    """The ``augment`` config block: static on-device augmentation settings (hashable)."""

    PREFIX: ClassVar[str] = "augment"

    flip: bool = option(True, "random horizontal flip", effect=PROGRAM)
    cutout: float = option(
        0.5,
        "probability of one Cutout square of half the image side (0 disables)",
        effect=PROGRAM,
        check=interval(0.0, 1.0),
    )
    randaugment: bool = option(
        False,
        "RandAugment-style brightness / contrast / saturation / translation",
        effect=PROGRAM,
    )


def to_float(images_uint8: jax.Array) -> jax.Array:
    """Converts uint8 images to float32 in ``[0, 1]`` (the evaluation path).

    .. math:: x = u / 255

    Args:
      images_uint8: uint8 array, any shape (usually [B, H, W, 3]). Floating inputs are returned as
        float32 unchanged (assumed already in [0, 1]).

    Returns:
      float32 array of the same shape.

    Examples:
      >>> to_float(jnp.array([0, 255], jnp.uint8))
      Array([0., 1.], dtype=float32)
    """
    images = jnp.asarray(images_uint8)
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images.astype(jnp.float32)
    if images.dtype != jnp.uint8:
        raise TypeError(f"images must be uint8 (or float in [0, 1]), got {images.dtype}.")
    return images.astype(jnp.float32) * (1.0 / 255.0)


def augment_images(
    rng: jax.Array,
    images_uint8: jax.Array,
    *,
    flip: bool = True,
    cutout: float = 0.5,
    randaugment: bool = False,
) -> jax.Array:
    """Random training augmentation of a batch, one independent draw per example.

    In order: RandAugment-style ops (when ``randaugment``; each with probability 1/2: brightness,
    contrast and saturation factors in ``[1 - d, 1 + d]``, a translation of up to 1/8 of the side
    with edge replication), horizontal flip (probability 1/2, when ``flip``), and with probability
    ``cutout`` one Cutout square of half the image side, centred uniformly in the image (clipped
    at the borders) and filled with a random colour, as in the official ASL code.

    Args:
      rng: a JAX PRNG key.
      images_uint8: uint8 [B, H, W, C] (float inputs in [0, 1] are accepted too).
      flip: random horizontal flips.
      cutout: probability of one Cutout square per example, in [0, 1]; 0 disables it.
      randaugment: the colour / translation ops.

    Returns:
      float32 [B, H, W, C] in ``[0, 1]``; deterministic given ``rng``.

    Examples:
      >>> x = jnp.zeros((2, 32, 32, 3), jnp.uint8)
      >>> augment_images(jax.random.key(0), x).shape
      (2, 32, 32, 3)

    References:
      DeVries & Taylor, "Improved Regularization of CNNs with Cutout", 2017;
      Cubuk et al., "RandAugment", 2020; Ridnik et al., "Asymmetric Loss", ICCV 2021.
    """
    images = to_float(images_uint8)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}.")
    if isinstance(cutout, bool) or not isinstance(cutout, int | float):
        raise TypeError(f"cutout must be a probability (float), got {cutout!r}.")
    if not 0.0 <= cutout <= 1.0:
        raise ValueError(f"cutout must be in [0, 1], got {cutout}.")
    if not (flip or cutout > 0 or randaugment):
        return images
    return _augment(
        rng, images, flip=bool(flip), cutout=float(cutout), randaugment=bool(randaugment)
    )


# jit so that eager calls compile once instead of dispatching every vmapped op; inside a jitted
# train step it is simply inlined.
@functools.partial(jax.jit, static_argnames=("flip", "cutout", "randaugment"))
def _augment(
    rng: jax.Array, images: jax.Array, *, flip: bool, cutout: float, randaugment: bool
) -> jax.Array:
    keys = jax.random.split(rng, images.shape[0])

    def one(key: jax.Array, image: jax.Array) -> jax.Array:
        k_ra, k_flip, k_cut = jax.random.split(key, 3)
        if randaugment:
            image = _randaugment(k_ra, image)
        if flip:
            image = jnp.where(jax.random.bernoulli(k_flip), image[:, ::-1], image)
        if cutout > 0:
            image = _cutout(k_cut, image, cutout)
        return image

    return jax.vmap(one)(keys, images)


def _cutout(key: jax.Array, image: jax.Array, probability: float) -> jax.Array:
    h, w, c = image.shape
    k_apply, k_y, k_x, k_colour = jax.random.split(key, 4)
    cy = jax.random.randint(k_y, (), 0, h)
    cx = jax.random.randint(k_x, (), 0, w)
    side_h, side_w = max(h // 2, 1), max(w // 2, 1)  # a square of half the image side
    rows = jnp.arange(h)[:, None] - (cy - side_h // 2)
    cols = jnp.arange(w)[None, :] - (cx - side_w // 2)
    inside = (rows >= 0) & (rows < side_h) & (cols >= 0) & (cols < side_w)
    inside &= jax.random.bernoulli(k_apply, probability)
    colour = jax.random.uniform(k_colour, (c,), jnp.float32)
    return jnp.where(inside[..., None], colour, image)


def _randaugment(key: jax.Array, image: jax.Array) -> jax.Array:
    h, w, _ = image.shape
    k_apply, k_b, k_c, k_s, k_t = jax.random.split(key, 5)
    apply = jax.random.bernoulli(k_apply, OP_PROBABILITY, (4,))

    def factor(k: jax.Array, delta: float, on: jax.Array) -> jax.Array:
        f = jax.random.uniform(k, (), jnp.float32, 1.0 - delta, 1.0 + delta)
        return jnp.where(on, f, 1.0)

    image = image * factor(k_b, BRIGHTNESS_DELTA, apply[0])
    mean = jnp.mean(image)
    image = mean + (image - mean) * factor(k_c, CONTRAST_DELTA, apply[1])
    grey = jnp.mean(image, axis=-1, keepdims=True)
    image = grey + (image - grey) * factor(k_s, SATURATION_DELTA, apply[2])
    image = jnp.clip(image, 0.0, 1.0)

    max_shift = max(round(TRANSLATE_FRACTION * min(h, w)), 1)
    shift = jax.random.randint(k_t, (2,), -max_shift, max_shift + 1) * apply[3]
    # A gather with clipped indices: translation with edge replication, no wrap-around.
    rows = jnp.clip(jnp.arange(h) - shift[0], 0, h - 1)
    cols = jnp.clip(jnp.arange(w) - shift[1], 0, w - 1)
    return image[rows][:, cols]
