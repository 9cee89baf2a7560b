"""Tests of asl_jax.adaptive: the probability analysis and the adaptive γ− rule."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import asl_jax.adaptive
from asl_jax import probability_stats, update_gamma_neg


def reference_stats(logits, labels, mask=None):
    p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    labels = np.asarray(labels)
    mask = np.ones(p.shape, bool) if mask is None else np.broadcast_to(mask, p.shape)
    pos = mask & (labels >= 0.5)
    neg = mask & (labels < 0.5)
    pos_mean = p[pos].mean() if pos.any() else np.nan
    neg_mean = (1 - p[neg]).mean() if neg.any() else np.nan
    return pos_mean, neg_mean, neg_mean - pos_mean


def make_batch(seed, shape=(32, 20)):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(scale=3, size=shape).astype(np.float32),
        (rng.uniform(size=shape) < 0.1).astype(np.float32),
    )


def test_stats_match_numpy():
    logits, labels = make_batch(0)
    stats = probability_stats(logits, labels)
    np.testing.assert_allclose(stats[:3], reference_stats(logits, labels), rtol=1e-5)
    assert float(stats.num_pos) == labels.sum()
    assert float(stats.num_neg) == labels.size - labels.sum()


def test_stats_with_mask():
    logits, labels = make_batch(1)
    rng = np.random.default_rng(1)
    mask = rng.uniform(size=labels.shape) < 0.7
    stats = probability_stats(logits, labels, where=mask)
    np.testing.assert_allclose(stats[:3], reference_stats(logits, labels, mask), rtol=1e-5)
    row_mask = np.arange(32)[:, None] < 20  # padded rows
    stats = probability_stats(logits, labels, where=row_mask)
    np.testing.assert_allclose(stats[:3], reference_stats(logits, labels, row_mask), rtol=1e-5)


def test_stats_sign_convention():
    # BCE-like state on imbalanced data: negatives confidently rejected, positives under-confident.
    logits = np.array([[-1.0, -6.0, -6.0, -6.0]], np.float32)
    labels = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
    stats = probability_stats(logits, labels)
    assert float(stats.delta_p) > 0.5


def test_stats_undefined_cases_are_nan_and_keep_gamma():
    logits = np.zeros((2, 3), np.float32)
    for labels in (np.zeros((2, 3)), np.ones((2, 3))):
        stats = probability_stats(logits, labels)
        assert np.isnan(stats.delta_p)
        assert float(update_gamma_neg(jnp.float32(3.0), stats.delta_p)) == 3.0
    stats = probability_stats(logits, np.ones((2, 3)), where=np.zeros((2, 3), bool))
    assert np.isnan(stats.pos_mean) and np.isnan(stats.neg_mean)


def test_stats_extreme_logits_are_exact():
    logits = np.array([[1e4, -1e4]], np.float32)
    stats = probability_stats(logits, np.array([[1.0, 0.0]]))
    assert float(stats.pos_mean) == 1.0 and float(stats.neg_mean) == 1.0


def test_stats_carry_no_gradient():
    logits, labels = make_batch(2, (4, 5))
    grad = jax.grad(lambda z: probability_stats(z, labels).delta_p)(jnp.asarray(logits))
    assert np.all(np.asarray(grad) == 0)


def test_update_direction_clamping_and_jit():
    update = jax.jit(update_gamma_neg, static_argnames=("step_size", "max_value"))
    gamma = jnp.float32(2.0)
    assert float(update(gamma, 0.5)) > 2.0  # gap above target -> raise γ−
    assert float(update(gamma, 0.0)) < 2.0  # below target -> lower γ−
    np.testing.assert_allclose(float(update(gamma, 0.1)), 2.0)
    np.testing.assert_allclose(float(update(gamma, 0.6, step_size=0.2)), 2.1, rtol=1e-6)
    assert float(update(gamma, 1.0, step_size=100.0, max_value=5.0)) == 5.0
    assert float(update(jnp.float32(0.01), -1.0)) == 0.0
    for undefined in (jnp.nan, jnp.inf, -jnp.inf):
        result = update(gamma, jnp.float32(undefined))
        assert float(result) == 2.0 and result.dtype == jnp.float32


def test_feedback_moves_gamma_towards_target():
    # A toy closed loop: a larger γ− shrinks Δp; the rule must settle where Δp = target.
    def delta_p_of(gamma):
        return 0.8 * jnp.exp(-0.5 * gamma)

    def step(gamma, _):
        return update_gamma_neg(gamma, delta_p_of(gamma)), None

    gamma, _ = jax.lax.scan(step, jnp.float32(0.0), length=2000)
    np.testing.assert_allclose(float(delta_p_of(gamma)), 0.1, atol=5e-3)


def test_update_rejects_bad_settings():
    with pytest.raises(ValueError, match="step_size must be >= 0"):
        update_gamma_neg(1.0, 0.2, step_size=-1.0)
    with pytest.raises(ValueError, match=r"max_value must be >= 2\.0"):
        update_gamma_neg(1.0, 0.2, min_value=2.0, max_value=1.0)
    with pytest.raises(ValueError, match="min_value must be >= 0"):
        update_gamma_neg(1.0, 0.2, min_value=-1.0)
    with pytest.raises(ValueError, match="must be scalars"):
        update_gamma_neg(jnp.ones(3), 0.2)
    with pytest.raises(TypeError, match="target must be a Python number"):
        update_gamma_neg(1.0, 0.2, target=jnp.float32(0.1))


def test_stats_reject_bad_input():
    with pytest.raises(ValueError, match="labels must have the logits' shape"):
        probability_stats(np.zeros((2, 3), np.float32), np.zeros((2, 4)))
    with pytest.raises(TypeError, match="floating-point"):
        probability_stats(np.zeros((2, 3), np.int32), np.zeros((2, 3)))
    with pytest.raises(TypeError, match="boolean mask"):
        probability_stats(np.zeros((2, 3), np.float32), np.zeros((2, 3)), where=np.ones((2, 3)))


def test_global_stats_sharded_over_eight_devices():
    logits, labels = make_batch(3, (64, 16))
    single = jax.jit(probability_stats)(logits, labels)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    sharded = jax.jit(probability_stats)(
        jax.device_put(logits, sharding), jax.device_put(labels, sharding)
    )
    np.testing.assert_allclose(sharded, single, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(single[:3], reference_stats(logits, labels), rtol=1e-5)

    # Inside shard_map each device sees its slice; axis_name makes the statistic global again.
    def local(z, y):
        return probability_stats(z, y, axis_name="data").delta_p

    mapped = jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P())
    np.testing.assert_allclose(jax.jit(mapped)(logits, labels), single.delta_p, atol=1e-6)


def test_docstring_examples():
    failures, tried = doctest.testmod(asl_jax.adaptive)
    assert tried > 0 and failures == 0
