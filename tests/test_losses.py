"""Tests of asl_jax.losses, mostly against an independent NumPy implementation of the loss.

The reference below writes the multi-label ASL formula and its gradient (see the docstring of
`asl_jax.asymmetric_loss`) naively, in extended precision, and the library must agree with it.
"""

import doctest
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import asl_jax.losses
from asl_jax import (
    asymmetric_loss,
    asymmetric_loss_single_label,
    known_labels_mask,
    partial_labels,
    reduce_loss,
)

# ------------------------------------------------------------------------------------------------
# Independent reference, evaluated in extended precision (x86 long double, 64-bit mantissa) so that
# 1 - p keeps enough digits for the moderate logits used. With p = σ(z) and p_m = max(p - m, 0):
#   loss    = y·L+ + (1 - y)·L−,  L+ = -(1 - p)^γ+ · log p,  L− = -p_m^γ− · log(1 - p_m)
#   dL+/dz  = (1 - p)^γ+ · (γ+ · p · log p - (1 - p))
#   dL−/dz  = p(1 - p) · p_m^γ− · (1/(1 - p_m) - γ− · log(1 - p_m)/p_m)  where p > m, else 0
#   dloss/dy = L+ - L−
# With detached focusing weights, dL+/dz = -(1 - p)^(γ+ + 1) and dL−/dz = p(1 - p)·p_m^γ−/(1 - p_m).


def reference_asl(z, y, gamma_pos, gamma_neg, clip, detach):
    """Returns (loss, dloss/dz, dloss/dy) element-wise, in float64."""
    z = np.asarray(z, np.longdouble)
    y = np.asarray(y, np.longdouble)
    p = 1.0 / (1.0 + np.exp(-z))
    pm = np.maximum(p - clip, 0.0)
    active = p > clip
    loss_pos = -((1 - p) ** gamma_pos) * np.log(p)
    loss_neg = -(pm**gamma_neg) * np.log(1 - pm)
    if detach:
        grad_pos = -((1 - p) ** (gamma_pos + 1))
        grad_neg = np.where(active, p * (1 - p) * pm**gamma_neg / (1 - pm), 0.0)
    else:
        grad_pos = (1 - p) ** gamma_pos * (gamma_pos * p * np.log(p) - (1 - p))
        safe_pm = np.where(active, pm, 0.5)  # the unused branch of the where stays finite
        grad_neg = np.where(
            active,
            p
            * (1 - p)
            * safe_pm**gamma_neg
            * (1 / (1 - safe_pm) - gamma_neg * np.log(1 - safe_pm) / safe_pm),
            0.0,
        )
    loss = y * loss_pos + (1 - y) * loss_neg
    results = (loss, y * grad_pos + (1 - y) * grad_neg, loss_pos - loss_neg)
    return tuple(np.asarray(r, np.float64) for r in results)


def reference_single_label(z, labels, gamma_pos, gamma_neg, eps):
    z = np.asarray(z, np.float64)
    num_classes = z.shape[-1]
    log_p = z - np.log(np.sum(np.exp(z - z.max(-1, keepdims=True)), -1, keepdims=True))
    log_p -= z.max(-1, keepdims=True)
    p = np.exp(log_p)
    onehot = np.eye(num_classes)[labels]
    weight = np.where(onehot == 1, (1 - p) ** gamma_pos, p**gamma_neg)
    targets = onehot * (1 - eps) + eps / num_classes
    return -np.sum(targets * weight * log_p, -1)


def make_inputs(seed, shape=(16, 24), scale=6.0, soft=False):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=shape)
    if soft:
        labels = rng.uniform(size=shape)
    else:
        labels = (rng.uniform(size=shape) < 0.3).astype(np.float64)
    return logits, labels


def value_and_grads(fn, logits, labels):
    def total(z, y):
        return jnp.sum(fn(z, y))

    return fn(logits, labels), jax.grad(total, argnums=(0, 1))(logits, labels)


GAMMAS_POS = (0.0, 0.5, 1.0, 2.0)
GAMMAS_NEG = (0.0, 0.3, 1.0, 2.5, 4.0)
CLIPS = (0.0, 0.05, 0.2)

# Largest errors against the reference seen by the tests below, printed at the end of the module
# (shown with `pytest -s`) as a record of the accuracy actually reached.
MAX_ERRORS = {}


def _record(name, actual, expected):
    err = float(np.max(np.abs(np.asarray(actual, np.float64) - expected) / (1 + np.abs(expected))))
    MAX_ERRORS[name] = max(MAX_ERRORS.get(name, 0.0), err)


@pytest.fixture(scope="module", autouse=True)
def _report_errors():
    yield
    for name, err in sorted(MAX_ERRORS.items()):
        print(f"\nmax relative error vs float64 reference [{name}]: {err:.3e}")


# ------------------------------------------------------------------------------------------------
# Values and gradients against the reference


def _fmt(value):
    return f"{value:g}"


# One test case per (γ+, γ−, m), named e.g. "gp=0-gn=4-m=0.05" so that a failure says which broke.
GAMMA_CLIP_GRID = [
    pytest.param(gp, gn, m, id=f"gp={_fmt(gp)}-gn={_fmt(gn)}-m={_fmt(m)}")
    for gp, gn, m in itertools.product(GAMMAS_POS, GAMMAS_NEG, CLIPS)
]


@pytest.mark.parametrize(("gamma_pos", "gamma_neg", "clip"), GAMMA_CLIP_GRID)
@pytest.mark.parametrize("soft", [False, True], ids=["soft=False", "soft=True"])
@pytest.mark.parametrize("detach", [False, True], ids=["detach=False", "detach=True"])
def test_float64_matches_reference(detach, soft, gamma_pos, gamma_neg, clip):
    logits, labels = make_inputs(0, soft=soft)
    with jax.enable_x64(True):
        expected = reference_asl(logits, labels, gamma_pos, gamma_neg, clip, detach)
        for traced in (False, True):
            gp = jnp.float64(gamma_pos) if traced else gamma_pos
            gn = jnp.float64(gamma_neg) if traced else gamma_neg

            def fn(z, y, gp=gp, gn=gn):
                return asymmetric_loss(
                    z, y, gamma_pos=gp, gamma_neg=gn, clip=clip, detach_focal_weight=detach
                )

            loss, (dz, dy) = value_and_grads(
                fn, jnp.asarray(logits, jnp.float64), jnp.asarray(labels, jnp.float64)
            )
            assert loss.dtype == jnp.float64
            context = f"γ+={gamma_pos} γ−={gamma_neg} m={clip} traced={traced}"
            np.testing.assert_allclose(loss, expected[0], rtol=1e-10, atol=1e-12, err_msg=context)
            np.testing.assert_allclose(dz, expected[1], rtol=1e-9, atol=1e-12, err_msg=context)
            np.testing.assert_allclose(dy, expected[2], rtol=1e-10, atol=1e-12, err_msg=context)
            _record("float64 loss", loss, expected[0])
            _record("float64 grad", dz, expected[1])


@pytest.mark.parametrize(("gamma_pos", "gamma_neg", "clip"), GAMMA_CLIP_GRID)
@pytest.mark.parametrize("detach", [False, True], ids=["detach=False", "detach=True"])
def test_float32_matches_reference(detach, gamma_pos, gamma_neg, clip):
    logits, labels = make_inputs(1, shape=(32, 40))
    expected = reference_asl(logits, labels, gamma_pos, gamma_neg, clip, detach)

    def fn(z, y):
        return asymmetric_loss(
            z,
            y,
            gamma_pos=gamma_pos,
            gamma_neg=gamma_neg,
            clip=clip,
            detach_focal_weight=detach,
        )

    loss, (dz, _) = value_and_grads(
        fn, jnp.asarray(logits, jnp.float32), jnp.asarray(labels, jnp.float32)
    )
    assert loss.dtype == jnp.float32 and dz.dtype == jnp.float32
    context = f"γ+={gamma_pos} γ−={gamma_neg} m={clip}"
    # Relative to max(1, |value|): float32 rounding of the logits themselves is ~6e-8·|z|.
    np.testing.assert_array_less(
        np.abs(loss - expected[0]) / (1 + np.abs(expected[0])), 2e-6, err_msg=context
    )
    np.testing.assert_array_less(
        np.abs(dz - expected[1]) / (1 + np.abs(expected[1])), 2e-6, err_msg=context
    )
    _record("float32 loss", loss, expected[0])
    _record("float32 grad", dz, expected[1])


def test_finite_differences_and_second_order():
    # Away from the kink at p = m the loss is smooth: check first and second reverse-mode
    # derivatives against finite differences in float64.
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        logits = jnp.asarray(rng.uniform(-3, 3, size=(4, 5)))
        labels = jnp.asarray(rng.uniform(size=(4, 5)))
        p = 1 / (1 + np.exp(-np.asarray(logits)))
        assert np.min(np.abs(p - 0.05)) > 1e-3
        for gamma_pos, gamma_neg, detach in [(1.5, 2.5, False), (2, 3, True)]:

            def total(z, y, gamma_pos=gamma_pos, gamma_neg=gamma_neg, detach=detach):
                return jnp.sum(
                    asymmetric_loss(
                        z,
                        y,
                        gamma_pos=gamma_pos,
                        gamma_neg=gamma_neg,
                        clip=0.05,
                        detach_focal_weight=detach,
                    )
                )

            if not detach:
                # Detached weights make the gradient differ from the loss' derivative by design.
                check_grads(total, (logits, labels), order=2, modes=("rev",), eps=1e-5)
            hessian_diag = jax.grad(lambda z, f=total: jnp.sum(jax.grad(f)(z, labels)))(logits)
            assert np.all(np.isfinite(hessian_diag))


def test_second_derivative_matches_reference_curvature():
    # grad of grad against a finite difference of the reference gradient (diagonal Hessian).
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        logits = rng.uniform(-4, 4, size=(64,))
        labels = (rng.uniform(size=(64,)) < 0.5).astype(np.float64)
        h = 1e-6
        expected = (
            reference_asl(logits + h, labels, 1.0, 4.0, 0.05, False)[1]
            - reference_asl(logits - h, labels, 1.0, 4.0, 0.05, False)[1]
        ) / (2 * h)
        keep = np.abs(1 / (1 + np.exp(-logits)) - 0.05) > 1e-3

        def grad_fn(z):
            return jax.grad(
                lambda z: jnp.sum(asymmetric_loss(z, labels, gamma_pos=1.0, gamma_neg=4.0))
            )(z)

        diag = jax.grad(lambda z: jnp.sum(grad_fn(z)))(jnp.asarray(logits))
        np.testing.assert_allclose(np.asarray(diag)[keep], expected[keep], rtol=1e-5, atol=1e-8)


def test_forward_mode_is_not_supported():
    logits, labels = make_inputs(4, shape=(3,))
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda z: asymmetric_loss(z, labels), (jnp.asarray(logits),), (jnp.ones(3),))


def test_residuals_are_only_the_inputs():
    # The forward pass must not keep B×K intermediates for the backward pass.
    logits, labels = make_inputs(5, shape=(8, 10))
    logits, labels = jnp.asarray(logits, jnp.float32), jnp.asarray(labels, jnp.float32)
    for kwargs in ({}, {"gamma_neg": jnp.float32(3.0)}, {"detach_focal_weight": True}):
        _, vjp_fn = jax.vjp(lambda z, kwargs=kwargs: asymmetric_loss(z, labels, **kwargs), logits)
        saved = sum(leaf.size for leaf in jax.tree.leaves(vjp_fn) if hasattr(leaf, "size"))
        assert saved <= logits.size + labels.size + 4, saved


# ------------------------------------------------------------------------------------------------
# Special cases: BCE and focal loss


@pytest.mark.parametrize("soft", [False, True])
def test_equals_optax_bce(soft):
    logits, labels = make_inputs(6, soft=soft)
    logits, labels = jnp.asarray(logits, jnp.float32), jnp.asarray(labels, jnp.float32)

    def ours(z, y):
        return asymmetric_loss(z, y, gamma_pos=0, gamma_neg=0, clip=0)

    loss, grads = value_and_grads(ours, logits, labels)
    ref_loss, ref_grads = value_and_grads(optax.sigmoid_binary_cross_entropy, logits, labels)
    chex.assert_trees_all_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.0])
def test_equals_optax_focal(gamma):
    logits, labels = make_inputs(7, scale=3.0)
    logits, labels = jnp.asarray(logits, jnp.float32), jnp.asarray(labels, jnp.float32)

    def ours(z, y):
        return asymmetric_loss(z, y, gamma_pos=gamma, gamma_neg=gamma, clip=0)

    def theirs(z, y):
        return optax.sigmoid_focal_loss(z, y, alpha=None, gamma=gamma)

    loss, (dz, _) = value_and_grads(ours, logits, labels)
    ref_loss, (ref_dz, _) = value_and_grads(theirs, logits, labels)
    chex.assert_trees_all_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(dz, ref_dz, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Extremes, dtypes, transformations


def extreme_logits():
    clip_logit = float(np.log(0.05 / 0.95))  # p = m exactly
    around_kink = clip_logit + np.array([-1e-3, -1e-6, 0.0, 1e-6, 1e-3])
    sweep = np.concatenate([-np.logspace(-3, 4, 30), [0.0], np.logspace(-3, 4, 30)])
    return np.concatenate([sweep, around_kink, [-1e4, 1e4, -88.0, -104.0, 17.0, 40.0]])


def _assert_finite(results, logits_dtype, context):
    loss, (dz, dy) = results
    assert loss.dtype == jnp.float32, context
    assert dz.dtype == logits_dtype, context
    for name, value in (("loss", loss), ("dloss/dz", dz), ("dloss/dy", dy)):
        assert np.all(np.isfinite(np.asarray(value, np.float32))), f"{name} not finite: {context}"
    assert np.all(np.asarray(loss) >= 0), context


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("clip", [0.0, 0.05, 0.2])
def test_finite_at_extremes(dtype, detach, clip):
    z = extreme_logits()
    if dtype == jnp.float16:
        z = np.clip(z, -6e4, 6e4)
    logits = jnp.asarray(np.tile(z, 3), dtype)
    labels = jnp.asarray(np.repeat([0.0, 1.0, 0.3], z.size), dtype)

    # Traced γ: the whole grid, including fractional values and 0, in one compiled function.
    grid = np.array(list(itertools.product((0.0, 0.25, 1.0, 2.5), (0.0, 0.25, 0.5, 1.0, 4.5))))

    @jax.jit
    @jax.vmap
    def traced(gammas):
        def fn(z, y):
            return asymmetric_loss(
                z,
                y,
                gamma_pos=gammas[0],
                gamma_neg=gammas[1],
                clip=clip,
                detach_focal_weight=detach,
            )

        return value_and_grads(fn, logits, labels)

    _assert_finite(traced(jnp.asarray(grid, jnp.float32)), dtype, f"traced grid, m={clip}")
    # Static γ: the integer-power and the exp-log paths.
    for gamma_pos, gamma_neg in [(0, 4), (1, 0), (2.5, 0.25), (0.25, 1), (0, 0.5)]:

        def static(z, y, gamma_pos=gamma_pos, gamma_neg=gamma_neg):
            return asymmetric_loss(
                z,
                y,
                gamma_pos=gamma_pos,
                gamma_neg=gamma_neg,
                clip=clip,
                detach_focal_weight=detach,
            )

        results = jax.jit(value_and_grads, static_argnums=0)(static, logits, labels)
        _assert_finite(results, dtype, f"static {gamma_pos, gamma_neg}, m={clip}")


def test_extreme_values_are_correct_not_only_finite():
    # The limits: a confident correct prediction costs ~0, a confident wrong one costs ~|z|.
    z = jnp.array([1e4, -1e4, 1e4, -1e4], jnp.float32)
    y = jnp.array([1.0, 0.0, 0.0, 1.0], jnp.float32)
    loss = asymmetric_loss(z, y, gamma_pos=0, gamma_neg=0, clip=0)
    np.testing.assert_allclose(loss, [0.0, 0.0, 1e4, 1e4], rtol=1e-6)
    # With m > 0 a confidently "wrong" negative costs at most -log(m) and gets ~0 gradient.
    loss, grad = jax.value_and_grad(lambda z: asymmetric_loss(z, jnp.zeros(1), clip=0.05).sum())(
        jnp.array([1e4], jnp.float32)
    )
    np.testing.assert_allclose(loss, -(0.95**4) * np.log(0.05), rtol=1e-6)
    np.testing.assert_allclose(grad, 0.0, atol=1e-30)


def test_grad_of_grad_finite_at_extremes():
    logits = jnp.asarray(extreme_logits(), jnp.float32)
    labels = jnp.asarray(np.resize([0.0, 1.0], logits.shape), jnp.float32)
    for gamma_neg, clip in [(0.5, 0.05), (4.0, 0.05), (0.25, 0.0), (4.0, 0.0)]:

        def grad_sum(z, gamma_neg=gamma_neg, clip=clip):
            return jnp.sum(
                jax.grad(
                    lambda z: jnp.sum(
                        asymmetric_loss(z, labels, gamma_pos=0.5, gamma_neg=gamma_neg, clip=clip)
                    )
                )(z)
            )

        assert np.all(np.isfinite(jax.grad(grad_sum)(logits)))


def test_traced_gamma_under_jit_matches_static():
    logits, labels = make_inputs(8)
    logits, labels = jnp.asarray(logits, jnp.float32), jnp.asarray(labels, jnp.float32)

    @jax.jit
    def traced(z, y, gamma_pos, gamma_neg):
        return jax.value_and_grad(
            lambda z: jnp.sum(asymmetric_loss(z, y, gamma_pos=gamma_pos, gamma_neg=gamma_neg))
        )(z)

    for gamma_pos, gamma_neg in [(0.0, 4.0), (1.0, 2.5), (0.5, 0.0)]:
        static = jax.value_and_grad(
            lambda z, gp=gamma_pos, gn=gamma_neg: jnp.sum(
                asymmetric_loss(z, labels, gamma_pos=gp, gamma_neg=gn)
            )
        )(logits)
        result = traced(logits, labels, jnp.float32(gamma_pos), jnp.float32(gamma_neg))
        chex.assert_trees_all_close(result, static, rtol=2e-5, atol=1e-6)


def test_gamma_receives_no_gradient():
    logits, labels = make_inputs(9, shape=(4, 4))

    def total(gamma_neg):
        return jnp.sum(asymmetric_loss(jnp.asarray(logits), labels, gamma_neg=gamma_neg))

    assert float(jax.grad(total)(jnp.float32(2.0))) == 0.0


def test_per_class_gamma_broadcasts():
    logits, labels = make_inputs(10, shape=(6, 3))
    gamma_neg = jnp.array([0.0, 1.0, 4.0])
    loss = asymmetric_loss(jnp.asarray(logits, jnp.float32), labels, gamma_neg=gamma_neg)
    for k, gamma in enumerate([0.0, 1.0, 4.0]):
        column = asymmetric_loss(
            jnp.asarray(logits[:, k], jnp.float32), labels[:, k], gamma_neg=gamma
        )
        np.testing.assert_allclose(loss[:, k], column, rtol=1e-6)


def test_vmap_matches_batch():
    logits, labels = make_inputs(11, shape=(5, 7))
    logits, labels = jnp.asarray(logits, jnp.float32), jnp.asarray(labels, jnp.float32)

    def per_example(z, y, gamma_neg):
        return jax.value_and_grad(lambda z: asymmetric_loss(z, y, gamma_neg=gamma_neg).sum())(z)

    gammas = jnp.linspace(0.0, 4.0, 5)
    values, grads = jax.vmap(per_example)(logits, labels, gammas)
    for i in (0, 3):
        value, grad = per_example(logits[i], labels[i], float(gammas[i]))
        np.testing.assert_allclose(values[i], value, rtol=1e-5)
        np.testing.assert_allclose(grads[i], grad, rtol=1e-5, atol=1e-7)


def test_sharded_over_eight_devices_matches_one_device():
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py sets 8 simulated CPU devices"
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    logits, labels = make_inputs(12, shape=(64, 30))
    logits, labels = jnp.asarray(logits, jnp.float32), jnp.asarray(labels, jnp.float32)

    def step(z, y, gamma_neg):
        return jax.value_and_grad(lambda z: jnp.sum(asymmetric_loss(z, y, gamma_neg=gamma_neg)))(z)

    single = jax.jit(step)(logits, labels, jnp.float32(3.0))
    batch_sharding = NamedSharding(mesh, P("data"))
    sharded_logits = jax.device_put(logits, batch_sharding)
    sharded_labels = jax.device_put(labels, batch_sharding)
    result = jax.jit(step)(sharded_logits, sharded_labels, jnp.float32(3.0))
    assert result[1].sharding.is_equivalent_to(batch_sharding, 2)
    chex.assert_trees_all_close(result, single, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Reductions, masks, partial labels


def test_reductions():
    loss = jnp.arange(12.0).reshape(3, 4)
    assert float(reduce_loss(loss, "sum")) == 66.0
    assert float(reduce_loss(loss, "batchmean")) == 22.0
    assert float(reduce_loss(loss, "mean")) == 5.5
    mask = jnp.array([[True] * 4, [True, False, False, False], [False] * 4])
    assert float(reduce_loss(loss, "sum", where=mask)) == 6.0 + 4.0
    assert float(reduce_loss(loss, "batchmean", where=mask)) == 10.0 / 2
    assert float(reduce_loss(loss, "mean", where=mask)) == 10.0 / 5
    assert float(reduce_loss(loss, "mean", where=jnp.zeros((3, 4), bool))) == 0.0
    row_mask = jnp.array([[True], [False], [True]])
    assert float(reduce_loss(loss, "batchmean", where=row_mask)) == (6.0 + 38.0) / 2


@pytest.mark.parametrize("reduction", ["sum", "batchmean", "mean"])
def test_masked_elements_get_zero_loss_and_gradient(reduction):
    logits, raw = make_inputs(13, shape=(8, 6))
    rng = np.random.default_rng(13)
    raw = np.where(rng.uniform(size=raw.shape) < 0.3, -1.0, raw)  # unknown labels
    targets, known = partial_labels(jnp.asarray(raw, jnp.float32))
    logits = jnp.asarray(logits, jnp.float32)
    # Poison the unknown elements: an infinite logit must not leak NaN through the mask.
    logits = jnp.where(known, logits, jnp.inf)

    def total(z):
        return reduce_loss(asymmetric_loss(z, targets), reduction, where=known)

    value, grad = jax.value_and_grad(total)(logits)
    assert np.isfinite(value)
    assert np.all(np.asarray(grad)[~np.asarray(known)] == 0.0)
    assert np.all(np.isfinite(grad))
    clean = jnp.where(known, logits, 0.0)
    expected = np.asarray(asymmetric_loss(clean, targets))[np.asarray(known)].sum()
    divisor = {"sum": 1, "batchmean": 8, "mean": int(np.sum(known))}[reduction]
    np.testing.assert_allclose(value, expected / divisor, rtol=1e-6)


def test_partial_labels():
    targets, known = partial_labels(jnp.array([[1.0, 0.0, -1.0]]))
    np.testing.assert_array_equal(targets, [[1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(known, [[True, True, False]])


def test_known_labels_mask_is_the_one_convention():
    raw = np.array([[1.0, 0.0, -1.0, -2.0, 0.5, np.nan]], np.float32)
    expected = [[True, True, False, False, True, True]]  # negative = unknown; NaN is not
    on_host = known_labels_mask(raw)
    assert isinstance(on_host, np.ndarray)  # NumPy in, NumPy out (no device round trip)
    np.testing.assert_array_equal(on_host, expected)
    np.testing.assert_array_equal(jax.jit(known_labels_mask)(jnp.asarray(raw)), expected)
    np.testing.assert_array_equal(known_labels_mask([1, 0, -1]), [True, True, False])
    np.testing.assert_array_equal(known_labels_mask(np.array([True, False])), [True, True])
    targets, known = partial_labels(jnp.asarray(raw))
    np.testing.assert_array_equal(known, expected)
    assert np.isnan(targets[0, 5])  # corrupt data is not hidden as an unknown label


# ------------------------------------------------------------------------------------------------
# Single-label ASL


@pytest.mark.parametrize(
    ("gamma_pos", "gamma_neg", "eps"), [(0, 4, 0.1), (1, 2, 0.2), (0.5, 1.5, 0.0), (0, 0, 0.0)]
)
def test_single_label_matches_reference(gamma_pos, gamma_neg, eps):
    rng = np.random.default_rng(14)
    logits = rng.normal(scale=3, size=(10, 6))
    labels = rng.integers(0, 6, size=10)
    with jax.enable_x64(True):
        loss = asymmetric_loss_single_label(
            jnp.asarray(logits),
            jnp.asarray(labels),
            gamma_pos=gamma_pos,
            gamma_neg=gamma_neg,
            label_smoothing=eps,
        )
        expected = reference_single_label(logits, labels, gamma_pos, gamma_neg, eps)
        np.testing.assert_allclose(loss, expected, rtol=1e-10)
        check_grads(
            lambda z: asymmetric_loss_single_label(
                z,
                jnp.asarray(labels),
                gamma_pos=gamma_pos,
                gamma_neg=gamma_neg,
                label_smoothing=eps,
            ).sum(),
            (jnp.asarray(logits),),
            order=1,
            modes=("rev",),
        )
    if gamma_pos == gamma_neg == eps == 0:
        ce = optax.softmax_cross_entropy_with_integer_labels(
            jnp.asarray(logits, jnp.float32), jnp.asarray(labels)
        )
        np.testing.assert_allclose(
            asymmetric_loss_single_label(
                jnp.asarray(logits, jnp.float32), labels, gamma_neg=0.0, label_smoothing=0.0
            ),
            ce,
            rtol=1e-5,
        )


def test_single_label_gamma_neg_needs_smoothing():
    rng = np.random.default_rng(15)
    logits = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    labels = jnp.array([0, 1, 2, 3])

    def loss(gamma_neg, eps):
        return asymmetric_loss_single_label(
            logits, labels, gamma_neg=gamma_neg, label_smoothing=eps
        )

    np.testing.assert_array_equal(loss(0.0, 0.0), loss(4.0, 0.0))
    assert not np.allclose(loss(0.0, 0.1), loss(4.0, 0.1))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_single_label_finite_at_extremes(dtype):
    logits = jnp.asarray([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [0.0, 0.0, 0.0]], dtype)
    labels = jnp.array([0, 0, 2])
    for gamma_pos, gamma_neg in [(0.0, 4.0), (0.5, 0.25), (2.0, 0.0)]:
        value, grad = jax.value_and_grad(
            lambda z, gp=gamma_pos, gn=gamma_neg: jnp.sum(
                asymmetric_loss_single_label(z, labels, gamma_pos=gp, gamma_neg=gn)
            )
        )(logits)
        assert np.isfinite(value)
        assert np.all(np.isfinite(np.asarray(grad, np.float32)))
        assert grad.dtype == dtype


# ------------------------------------------------------------------------------------------------
# Bad input fails at trace time with a message that says what was expected


# (id, exception, message pattern, call on z = y = zeros((2, 3)) float32)
BAD_INPUTS = [
    (
        "logits-int32",
        TypeError,
        "floating-point",
        lambda z, y: asymmetric_loss(jnp.zeros((2, 3), jnp.int32), y),
    ),
    (
        "labels-wrong-shape",
        ValueError,
        r"labels must have shape \(2, 3\)",
        lambda z, y: asymmetric_loss(z, jnp.zeros((2, 4))),
    ),
    (
        "gamma_neg-negative-number",
        ValueError,
        "gamma_neg must be a finite number >= 0",
        lambda z, y: asymmetric_loss(z, y, gamma_neg=-1.0),
    ),
    (
        "gamma_pos-negative-array",
        ValueError,
        "gamma_pos must be finite and >= 0",
        lambda z, y: asymmetric_loss(z, y, gamma_pos=jnp.float32(-0.5)),
    ),
    (
        "clip-one",
        ValueError,
        r"clip .* must lie in \[0, 1\)",
        lambda z, y: asymmetric_loss(z, y, clip=1.0),
    ),
    (
        "clip-negative",
        ValueError,
        r"clip .* must lie in \[0, 1\)",
        lambda z, y: asymmetric_loss(z, y, clip=-0.1),
    ),
    (
        "clip-array",
        TypeError,
        "clip must be a Python number",
        lambda z, y: asymmetric_loss(z, y, clip=jnp.float32(0.05)),
    ),
    (
        "detach_focal_weight-int",
        TypeError,
        "detach_focal_weight must be a Python bool",
        lambda z, y: asymmetric_loss(z, y, detach_focal_weight=1),
    ),
    (
        "gamma_neg-not-broadcastable",
        ValueError,
        "broadcastable",
        lambda z, y: asymmetric_loss(z, y, gamma_neg=jnp.ones(4)),
    ),
    (
        "reduction-unknown",
        ValueError,
        "reduction must be one of sum, batchmean, mean",
        lambda z, y: reduce_loss(z, "avg"),
    ),
    (
        "reduce_loss-where-not-bool",
        TypeError,
        "boolean mask",
        lambda z, y: reduce_loss(z, "sum", where=jnp.ones((2, 3))),
    ),
    (
        "single_label-labels-float",
        TypeError,
        "integer class ids",
        lambda z, y: asymmetric_loss_single_label(z, jnp.zeros(2)),
    ),
    (
        "single_label-labels-wrong-shape",
        ValueError,
        "labels must have shape",
        lambda z, y: asymmetric_loss_single_label(z, jnp.zeros(3, jnp.int32)),
    ),
    (
        "single_label-class-id-out-of-range",
        ValueError,
        r"class ids in \[0, 3\)",
        lambda z, y: asymmetric_loss_single_label(z, jnp.array([0, 3])),
    ),
    (
        "single_label-label_smoothing-one",
        ValueError,
        "label_smoothing",
        lambda z, y: asymmetric_loss_single_label(z, jnp.array([0, 1]), label_smoothing=1.0),
    ),
]


@pytest.mark.parametrize(
    ("error", "match", "call"),
    [pytest.param(error, match, call, id=name) for name, error, match, call in BAD_INPUTS],
)
def test_bad_inputs_raise(error, match, call):
    z = jnp.zeros((2, 3))
    y = jnp.zeros((2, 3))
    with pytest.raises(error, match=match):
        call(z, y)


def test_bad_inputs_raise_at_trace_time_under_jit():
    @jax.jit
    def f(z, y):
        return asymmetric_loss(z, y, clip=1.5)

    with pytest.raises(ValueError, match="clip"):
        f(jnp.zeros(3), jnp.zeros(3))


def test_docstring_examples():
    failures, tried = doctest.testmod(asl_jax.losses, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried > 0 and failures == 0
