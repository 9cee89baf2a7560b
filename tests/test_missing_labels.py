"""Tests of asl_jax.missing_labels against the papers' formulas computed in float64 NumPy."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import asl_jax.missing_labels
from asl_jax import (
    assume_negative_loss,
    focal_margin_loss,
    hill_loss,
    large_loss_weights,
    selective_loss,
    splc_labels,
    update_class_prior,
)


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


def reference_assume_negative(z, y, negative_weight, smoothing):
    """Cole et al.: BCE on t = (1 − ε)·[y = 1] + ε/2, negatives (0 or unknown) weighted by w−."""
    positive = (y == 1).astype(np.float64)
    t = (1 - smoothing) * positive + smoothing / 2
    p = _sigmoid(z)
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    return bce * np.where(positive == 1, 1.0, negative_weight)


def reference_selective(z, y, prior, gamma_pos, gamma_neg, gamma_unknown, clip, topk, threshold):
    """Ben-Baruch et al., written from the paper: ASL on the annotated entries; an unknown entry
    is ignored when its class prior exceeds the threshold or it is among the top-k·B unknown
    entries of the batch by probability, else an ASL negative with γ_u."""
    p = _sigmoid(z)
    p_m = np.maximum(p - clip, 0.0)
    positive = -((1 - p) ** gamma_pos) * np.log(p)
    negative = lambda gamma: -(p_m**gamma) * np.log(1 - p_m)  # noqa: E731
    loss = np.where(y == 1, positive, negative(gamma_neg))
    unknown = y < 0
    order = sorted(zip(*np.nonzero(unknown), strict=True), key=lambda ij: -p[ij])
    likely = set(order[: topk * z.shape[0]])
    for i, j in zip(*np.nonzero(unknown), strict=True):
        ignored = prior[j] > threshold or (i, j) in likely
        loss[i, j] = 0.0 if ignored else negative(gamma_unknown)[i, j]
    return loss


def _partial(seed, shape):
    rng = np.random.default_rng(seed)
    return rng.choice([1.0, 0.0, -1.0], size=shape, p=[0.2, 0.3, 0.5])


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

    @parameterized.named_parameters(
        ("assume_negative", 1.0, 0.0),
        ("weak_assume_negative", 1 / 6, 0.0),
        ("label_smoothing", 1.0, 0.1),
        ("both", 0.3, 0.2),
    )
    def test_assume_negative_equals_the_formula(self, negative_weight, smoothing):
        z, y = _data(4)
        y = np.where(np.random.default_rng(4).random(y.shape) < 0.3, -1.0, y)  # unknown: negative
        got = assume_negative_loss(
            jnp.asarray(z), jnp.asarray(y), negative_weight=negative_weight,
            label_smoothing=smoothing,
        )  # fmt: skip
        expected = reference_assume_negative(z, y, negative_weight, smoothing)
        np.testing.assert_allclose(got, expected, rtol=1e-12)

    @parameterized.named_parameters(
        ("paper_defaults", 0.0, 1.0, 2.0, 0.0, 5, 0.05),
        ("margin_and_focus", 0.5, 4.0, 3.0, 0.05, 2, 0.1),
        ("no_top_k", 0.0, 2.0, 1.0, 0.0, 0, 0.2),
        ("no_prior_rule", 1.0, 0.0, 0.0, 0.1, 1, 1.0),
    )
    def test_selective_equals_the_formula(self, gamma_pos, gamma_neg, gamma_unknown, clip, k, thr):
        z, _ = _data(5, shape=(4, 9), scale=3.0)
        y = _partial(5, z.shape)
        prior = np.random.default_rng(6).random(z.shape[1]) * 0.2
        settings = dict(gamma_pos=gamma_pos, gamma_neg=gamma_neg, gamma_unknown=gamma_unknown,
                        clip=clip, likelihood_topk=k, prior_threshold=thr)  # fmt: skip
        got = selective_loss(jnp.asarray(z), jnp.asarray(y), class_prior=jnp.asarray(prior),
                             **settings)  # fmt: skip
        expected = reference_selective(z, y, prior, gamma_pos, gamma_neg, gamma_unknown, clip, k,
                                       thr)  # fmt: skip
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-300)

    @parameterized.named_parameters(("none", 0.0), ("some", 0.1), ("half", 0.5), ("all", 1.0))
    def test_large_loss_weights_reject_the_largest_unobserved(self, rate):
        rng = np.random.default_rng(7)
        losses = rng.random((5, 8))
        labels = (rng.random((5, 8)) < 0.2).astype(np.float64)
        got = np.asarray(large_loss_weights(losses, labels, rejection_rate=rate))
        # Kim et al.: k = ceil(rate · B · K) of the unobserved entries, largest loss first.
        unobserved = np.flatnonzero(labels.ravel() != 1)
        k = min(int(np.ceil(rate * losses.size)), unobserved.size)
        rejected = unobserved[np.argsort(-losses.ravel()[unobserved])[:k]]
        expected = np.ones(losses.size)
        expected[rejected] = 0.0
        np.testing.assert_array_equal(got.ravel(), expected)

    def test_class_prior_is_a_running_mean_of_the_probabilities(self):
        z, _ = _data(8, shape=(6, 4))
        rows = np.array([True, True, False, True, True, False])
        got = update_class_prior(jnp.full(4, 0.2), jnp.asarray(z), decay=0.9, where=rows)
        expected = 0.9 * 0.2 + 0.1 * _sigmoid(z[rows]).mean(axis=0)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        unchanged = update_class_prior(jnp.full(4, 0.2), jnp.asarray(z), where=np.zeros(6, bool))
        np.testing.assert_array_equal(unchanged, np.float32(0.2))


class SelectiveRuleTest(parameterized.TestCase):
    def test_unknown_entries_of_frequent_classes_and_likely_ones_get_no_gradient(self):
        z = jnp.asarray([[4.0, -2.0, 1.0], [0.0, 3.0, -1.0]])
        y = jnp.asarray([[-1.0, -1.0, 1.0], [-1.0, -1.0, 0.0]])
        prior = jnp.asarray([0.5, 0.01, 0.01])  # class 0 frequent: its unknowns are ignored
        grad = jax.grad(lambda x: selective_loss(x, y, class_prior=prior, likelihood_topk=0).sum())(
            z
        )
        np.testing.assert_array_equal(grad[:, 0], 0.0)
        assert bool(jnp.all(grad[:, 1] > 0)) and bool(jnp.all(grad[:, 2] != 0))
        # Top-1 per image: the 2 most likely unknowns of the batch (4.0 in class 0, 3.0 in
        # class 1) are ignored; the other unknown (-2.0) is learned as a negative.
        loss = selective_loss(z, y, class_prior=jnp.zeros(3), likelihood_topk=1)
        assert float(loss[0, 0]) == float(loss[1, 1]) == 0.0 and float(loss[0, 1]) > 0

    def test_padding_rows_are_not_chosen_as_likely(self):
        # One per image: 3 of the batch's unknowns, chosen among the two real rows only.
        z = jnp.asarray([[9.0, 9.0], [1.0, -1.0], [-2.0, -3.0]])
        y = jnp.full((3, 2), -1.0)
        rows = jnp.asarray([[False], [True], [True]])
        loss = selective_loss(z, y, class_prior=jnp.zeros(2), likelihood_topk=1, where=rows)
        np.testing.assert_array_equal(loss[1:], [[0.0, 0.0], [0.0, loss[2, 1]]])
        assert float(loss[2, 1]) > 0


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

    @parameterized.product(
        name=("assume_negative", "selective"),
        dtype=(jnp.float32, jnp.bfloat16, jnp.float16),
    )
    def test_new_losses_are_finite_at_extreme_logits(self, name, dtype):
        limit = 6e4 if dtype == jnp.float16 else 1e4
        z = jnp.asarray([-limit, -100.0, -1e-3, 0.0, 1e-3, 100.0, limit], dtype)[:, None]
        z = jnp.tile(z, (1, 3))
        y = jnp.asarray([[1.0, 0.0, -1.0]] * z.shape[0])
        fn = {
            "assume_negative": lambda x: assume_negative_loss(
                x, y, negative_weight=0.5, label_smoothing=0.1
            ),
            "selective": lambda x: selective_loss(
                x, y, class_prior=jnp.zeros(3), gamma_neg=0.5, clip=0.05, likelihood_topk=1
            ),
        }[name]
        value = fn(z)
        grad = jax.grad(lambda x: fn(x).sum())(z)
        assert value.dtype == jnp.float32 and grad.dtype == dtype
        assert bool(jnp.all(jnp.isfinite(value))) and bool(jnp.all(jnp.isfinite(grad)))
        assert bool(jnp.all(value >= 0))

    def test_large_loss_weights_are_finite_with_infinite_losses(self):
        losses = jnp.asarray([[jnp.inf, 1.0, 0.5, 2.0]])
        weights = large_loss_weights(losses, jnp.zeros((1, 4)), rejection_rate=0.5)
        np.testing.assert_array_equal(weights, [[0.0, 1.0, 1.0, 0.0]])


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
        (
            "smoothing_above_one",
            lambda: assume_negative_loss(jnp.ones(2), jnp.ones(2), label_smoothing=2.0),
            ValueError,
        ),
        (
            "prior_of_another_size",
            lambda: selective_loss(jnp.ones((2, 3)), jnp.ones((2, 3)), class_prior=jnp.ones(2)),
            ValueError,
        ),
        (
            "selective_on_one_axis",
            lambda: selective_loss(jnp.ones(3), jnp.ones(3), class_prior=jnp.ones(3)),
            ValueError,
        ),
        (
            "float_top_k",
            lambda: selective_loss(
                jnp.ones((2, 3)), jnp.ones((2, 3)), class_prior=jnp.ones(3), likelihood_topk=1.5
            ),
            TypeError,
        ),
        (
            "rejection_labels_of_another_shape",
            lambda: large_loss_weights(jnp.ones((2, 3)), jnp.ones((2, 2)), rejection_rate=0.1),
            ValueError,
        ),
    )
    def test_bad_input_fails_at_trace_time(self, build, error):
        with pytest.raises(error):
            build()


def test_docstring_examples_run():
    failures, tried = doctest.testmod(asl_jax.missing_labels)
    assert tried >= 3 and failures == 0
