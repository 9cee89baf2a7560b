"""Tests of asl_jax.missing_labels against the papers' formulas computed in float64 NumPy."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import asl_jax.missing_labels
from asl_jax import focal_margin_loss, hill_loss, splc_labels


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference_focal_margin(z, y, margin, gamma):
    """Zhang et al., eq. (focal margin): positives at z − m, focal negatives."""
    p, p_m = _sigmoid(z), _sigmoid(z - margin)
    return -y * (1 - p_m) ** gamma * np.log(p_m) - (1 - y) * p**gamma * np.log(1 - p)


def reference_hill(z, y, margin, gamma, lam):
    """Zhang et al., eq. (Hill): focal margin positives, (λ − p)·p² negatives."""
    p, p_m = _sigmoid(z), _sigmoid(z - margin)
    return -y * (1 - p_m) ** gamma * np.log(p_m) + (1 - y) * (lam - p) * p**2


def _data(seed=0, shape=(6, 7), scale=4.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=shape) * scale
    y = (rng.random(shape) < 0.3).astype(np.float64)
    return z, y


class LossReferenceTest(parameterized.TestCase):
    """Float64 comparisons (``jax.enable_x64`` only around them: other modules run in float32)."""

    def setUp(self):
        super().setUp()
        self.enter_context(jax.enable_x64(True))

    @parameterized.named_parameters(
        ("default", 1.0, 2.0),
        ("no_margin", 0.0, 2.0),
        ("fractional_gamma", 0.5, 1.5),
        ("gamma_zero", 1.0, 0.0),
        ("negative_margin", -0.5, 3.0),
    )
    def test_focal_margin_equals_the_formula(self, margin, gamma):
        z, y = _data()
        got = focal_margin_loss(jnp.asarray(z), jnp.asarray(y), margin=margin, gamma=gamma)
        np.testing.assert_allclose(got, reference_focal_margin(z, y, margin, gamma), rtol=1e-12)

    @parameterized.named_parameters(
        ("default", 1.0, 2.0, 1.5),
        ("fractional_gamma", 0.5, 0.5, 1.5),
        ("lambda_one", 1.0, 2.0, 1.0),
    )
    def test_hill_equals_the_formula(self, margin, gamma, lam):
        z, y = _data(1)
        got = hill_loss(jnp.asarray(z), jnp.asarray(y), margin=margin, gamma=gamma, hill_lambda=lam)
        np.testing.assert_allclose(got, reference_hill(z, y, margin, gamma, lam), rtol=1e-12)

    @parameterized.named_parameters(("focal_margin", "focal_margin"), ("hill", "hill"))
    def test_gradient_matches_finite_differences(self, name):
        z, y = _data(2, shape=(3, 5), scale=3.0)
        fn = {
            "focal_margin": lambda x: focal_margin_loss(x, y, margin=0.7, gamma=1.5).sum(),
            "hill": lambda x: hill_loss(x, y, margin=0.7, gamma=1.5).sum(),
        }[name]
        grad = np.asarray(jax.grad(fn)(jnp.asarray(z)))
        eps = 1e-6
        numeric = np.zeros_like(z)
        for index in np.ndindex(z.shape):
            step = np.zeros_like(z)
            step[index] = eps
            numeric[index] = (fn(jnp.asarray(z + step)) - fn(jnp.asarray(z - step))) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)

    def test_no_margin_is_optax_focal_loss(self):
        z, y = _data(3)
        np.testing.assert_allclose(
            focal_margin_loss(jnp.asarray(z), jnp.asarray(y), margin=0.0, gamma=2.0),
            optax.sigmoid_focal_loss(jnp.asarray(z), jnp.asarray(y), alpha=None, gamma=2.0),
            rtol=1e-10,
        )

    def test_hill_negative_gradient_falls_for_confident_negatives(self):
        # d/dz (λ − p)p² = p(1 − p)(2λp − 3p²): zero at p = 2λ/3 = 1 for λ = 1.5; decreasing
        # towards a confident negative (the missing-label argument).
        z = jnp.linspace(-2.0, 8.0, 101)
        grad = jax.vmap(jax.grad(lambda x: hill_loss(x, jnp.zeros(()))))(z)
        peak = int(jnp.argmax(grad))
        assert 0 < peak < 100 and float(grad[-1]) < 0.01 * float(grad[peak])


class ExtremesTest(parameterized.TestCase):
    @parameterized.product(
        name=("focal_margin", "hill"),
        dtype=(jnp.float32, jnp.bfloat16, jnp.float16),
        gamma=(0.0, 0.5, 2.0),
    )
    def test_finite_loss_and_gradient_at_extreme_logits(self, name, dtype, gamma):
        limit = 6e4 if dtype == jnp.float16 else 1e4
        z = jnp.asarray([-limit, -100.0, -1e-3, 0.0, 1e-3, 100.0, limit], dtype)[:, None]
        z = jnp.tile(z, (1, 2))
        y = jnp.asarray([[1.0, 0.0]] * z.shape[0])
        fn = {"focal_margin": focal_margin_loss, "hill": hill_loss}[name]
        value = fn(z, y, gamma=gamma)
        grad = jax.grad(lambda x: fn(x, y, gamma=gamma).sum())(z)
        assert value.dtype == jnp.float32 and grad.dtype == dtype
        assert bool(jnp.all(jnp.isfinite(value))) and bool(jnp.all(jnp.isfinite(grad)))
        assert bool(jnp.all(value >= 0))


class SplcLabelsTest(parameterized.TestCase):
    def test_confident_negatives_become_positives_when_active(self):
        z = jnp.asarray([[3.0, 0.0, 3.0, -3.0, 0.5]])
        y = jnp.asarray([[0.0, 0.0, 1.0, 1.0, 0.0]])
        # σ(0.5) = 0.62 > 0.6: corrected; σ(0) = 0.5: kept.
        np.testing.assert_array_equal(splc_labels(z, y), [[1, 0, 1, 1, 1]])
        np.testing.assert_array_equal(splc_labels(z, y, active=False), y)
        np.testing.assert_array_equal(splc_labels(z, y, tau=0.99), y)

    def test_unknown_entries_are_not_corrected_and_no_gradient_flows(self):
        z = jnp.asarray([[3.0, 3.0]])
        y = jnp.asarray([[0.0, 0.0]])
        np.testing.assert_array_equal(splc_labels(z, y, where=jnp.array([[True, False]])), [[1, 0]])
        grad = jax.grad(lambda x: splc_labels(x, y).sum())(z)
        np.testing.assert_array_equal(grad, 0.0)

    def test_traced_activity_under_jit(self):
        fn = jax.jit(lambda z, y, step: splc_labels(z, y, active=step >= 10))
        z, y = jnp.asarray([[3.0]]), jnp.asarray([[0.0]])
        assert float(fn(z, y, 9)[0, 0]) == 0.0 and float(fn(z, y, 10)[0, 0]) == 1.0


class BadInputTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("int_logits", lambda: hill_loss(jnp.ones((2, 2), int), jnp.ones((2, 2))), TypeError),
        ("shape", lambda: hill_loss(jnp.ones((2, 2)), jnp.ones((2, 3))), ValueError),
        (
            "negative_gamma",
            lambda: focal_margin_loss(jnp.ones(2), jnp.ones(2), gamma=-1),
            ValueError,
        ),
        (
            "nan_margin",
            lambda: hill_loss(jnp.ones(2), jnp.ones(2), margin=float("nan")),
            ValueError,
        ),
        (
            "traced_margin",
            lambda: hill_loss(jnp.ones(2), jnp.ones(2), margin=jnp.ones(())),
            TypeError,
        ),
        (
            "negative_lambda",
            lambda: hill_loss(jnp.ones(2), jnp.ones(2), hill_lambda=-1.0),
            ValueError,
        ),
        ("tau_above_one", lambda: splc_labels(jnp.ones(2), jnp.ones(2), tau=1.5), ValueError),
    )
    def test_bad_input_fails_at_trace_time(self, build, error):
        with pytest.raises(error):
            build()


def test_docstring_examples_run():
    failures, tried = doctest.testmod(asl_jax.missing_labels)
    assert tried >= 3 and failures == 0
