"""On-device augmentation: shapes, dtype, range, determinism, each op's effect."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asl_jax.data.augment import augment_images, to_float


def _images(b=16, s=16):
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.integers(0, 256, size=(b, s, s, 3), dtype=np.uint8))


def test_to_float():
    x = jnp.array([[0, 51, 255]], jnp.uint8)
    y = to_float(x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, [[0.0, 0.2, 1.0]], rtol=1e-6)
    assert to_float(jnp.ones(2, jnp.bfloat16)).dtype == jnp.float32
    with pytest.raises(TypeError, match="uint8"):
        to_float(jnp.ones(2, jnp.int32))


@pytest.mark.parametrize("randaugment", [False, True])
def test_shape_dtype_range_and_determinism(randaugment):
    x = _images()
    fn = jax.jit(
        lambda k, im: augment_images(k, im, flip=True, cutout=0.5, randaugment=randaugment)
    )
    a = fn(jax.random.key(1), x)
    b = fn(jax.random.key(1), x)
    c = fn(jax.random.key(2), x)
    assert a.shape == x.shape and a.dtype == jnp.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_disabled_is_identity():
    x = _images()
    y = augment_images(jax.random.key(0), x, flip=False, cutout=0.0, randaugment=False)
    np.testing.assert_array_equal(y, to_float(x))


def test_flip_only_flips_about_half():
    x = _images(b=64)
    y = np.asarray(augment_images(jax.random.key(3), x, flip=True, cutout=0.0))
    xf = np.asarray(to_float(x))
    same = np.all(y == xf, axis=(1, 2, 3))
    flipped = np.all(y == xf[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | flipped)
    assert 16 < flipped.sum() < 48


def test_cutout_square_of_half_side():
    x = jnp.zeros((64, 16, 16, 3), jnp.uint8)
    y = np.asarray(augment_images(jax.random.key(4), x, flip=False, cutout=1.0))
    changed = np.any(y != 0, axis=-1)  # random fill colours are almost surely non-zero
    for m in changed:
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        assert rows.size and cols.size
        # A square of side 8 centred in the image, clipped at the border.
        assert rows.size <= 8 and cols.size <= 8 and m.sum() == rows.size * cols.size
    assert max(int(m.sum()) for m in changed) == 64  # unclipped squares are 8 x 8
    never = augment_images(jax.random.key(4), x, flip=False, cutout=0.0)
    assert not np.any(never)
    some = np.asarray(augment_images(jax.random.key(5), x, flip=False, cutout=0.5))
    frac = np.mean(np.any(some != 0, axis=(1, 2, 3)))
    assert 0.25 < frac < 0.75


def test_per_example_independence_of_batch_composition():
    # An example's augmentation depends on its key only: the same key gives the same result
    # whatever the other examples are.
    x = _images(b=8)
    key = jax.random.key(9)
    a = augment_images(key, x, randaugment=True)
    b = augment_images(key, x.at[1:].set(0), randaugment=True)
    np.testing.assert_array_equal(a[0], b[0])


def test_bad_arguments():
    x = _images(b=2)
    with pytest.raises(ValueError, match="cutout"):
        augment_images(jax.random.key(0), x, cutout=1.5)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        augment_images(jax.random.key(0), x[0])
