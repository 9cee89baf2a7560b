"""Tests of the train/eval steps on a device mesh: 1 vs 8 devices, adaptive γ−, non-finite guard.

One tiny problem (the ``shapes`` data at 16 px, a 4-channel CNN) is compiled once per mesh and
shared by the tests of this module.
"""

import jax
import numpy as np
import optax
import pytest

from asl_jax.data import BatchRequest, create_source
from asl_jax.training import parallel
from asl_jax.training.config import validate_config
from asl_jax.training.optim import create_optimizer, create_schedule, kernel_mask
from asl_jax.training.programs import build_programs
from train.configs.default import get_config

NUM_STEPS = 8
STEP_SIZE = 2.0  # a large λ so that γ− moves visibly in a few steps


def tiny_config(cache_dir):
    config = get_config()
    config.model.width = 4
    config.data.image_size = 16
    config.data.num_train = 64
    config.data.num_val = 32
    config.data.cache_dir = str(cache_dir)
    config.batch_size = 16
    config.num_steps = NUM_STEPS
    config.learning_rate = 1e-2
    config.loss.adaptive = True
    config.loss.adaptive_step_size = STEP_SIZE
    config.progress_bar = False
    return validate_config(config)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("shapes"))
    source = create_source(config.data, seed=config.seed)
    batches = []
    for epoch in range(2):
        batches += list(
            source.batches(
                BatchRequest(
                    "train", batch_size=16, seed=0, epoch=epoch, shuffle=True, drop_remainder=True
                )
            )
        )
    return config, source, batches[:NUM_STEPS]


def _run(config, source, batches, devices):
    mesh = parallel.make_mesh(devices)
    programs = build_programs(
        config,
        num_classes=source.num_classes,
        image_size=source.image_size,
        total_steps=NUM_STEPS,
        mesh=mesh,
    )
    state = programs.init(jax.random.key(0))
    history = []
    for batch in batches:
        state, metrics = programs.train(state, parallel.shard_batch(batch, mesh))
        history.append(jax.device_get(metrics))
    return programs, mesh, state, {k: np.array([m[k] for m in history]) for k in history[0]}


@pytest.fixture(scope="module")
def runs(problem):
    config, source, batches = problem
    one = _run(config, source, batches, jax.devices()[:1])
    eight = _run(config, source, batches, jax.devices())
    return one, eight


def test_one_and_eight_devices_give_the_same_trajectory(runs):
    (_, mesh1, state1, hist1), (_, mesh8, state8, hist8) = runs
    assert mesh1.size == 1 and mesh8.size == 8
    # The batch is split over 8 devices; the loss, batch norm and Δp are global reductions.
    assert state8.params["Dense_0"]["kernel"].sharding.mesh.size == 8
    for key in ("loss", "gamma_neg", "delta_p", "pos_mean", "neg_mean", "grad_norm", "lr"):
        np.testing.assert_allclose(hist8[key], hist1[key], rtol=2e-5, atol=2e-5, err_msg=key)
    params_diff = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state8.params), strict=True)
    )
    print(
        f"8 devices vs 1 after {NUM_STEPS} steps: params {params_diff:.2e}, "
        f"loss {np.max(np.abs(hist8['loss'] - hist1['loss'])):.2e}, "
        f"γ− {np.max(np.abs(hist8['gamma_neg'] - hist1['gamma_neg'])):.2e}"
    )
    assert params_diff < 1e-4
    assert int(state1.step) == int(state8.step) == NUM_STEPS


def test_gamma_neg_in_the_state_follows_the_adaptive_rule(runs, problem):
    config = problem[0]
    _, _, state, hist = runs[1]
    gamma, delta_p = hist["gamma_neg"], hist["delta_p"]
    assert gamma[0] == pytest.approx(config.loss.gamma_neg)
    # γ−(t+1) = clip(γ−(t) + λ (Δp(t) − target)): the value carried in the state is the rule's.
    target = config.loss.delta_p_target
    expected = np.clip(gamma + STEP_SIZE * (delta_p - target), 0.0, 8.0)
    np.testing.assert_allclose(gamma[1:], expected[:-1], atol=1e-5)
    assert float(state.gamma_neg) == pytest.approx(expected[-1], abs=1e-5)
    # Each step moves γ− in the direction that closes the Δp gap (negative feedback).
    moved = np.diff(gamma)
    assert np.all(np.sign(moved) == np.sign(delta_p[:-1] - target))
    assert np.any(moved != 0)


def test_gamma_neg_moves_delta_p_towards_the_target():
    # A learnable problem: 4 labels that are functions of the image's colour channels.
    from asl_jax.data import ArraySource

    rng = np.random.default_rng(0)
    n, size = 256, 8
    labels = (rng.random((n, 4)) < 0.25).astype(np.float32)
    images = np.zeros((n, size, size, 3), np.uint8)
    images[..., 0] = 200 * labels[:, None, None, 0]
    images[..., 1] = 200 * labels[:, None, None, 1]
    images[..., 2] = 100 * labels[:, None, None, 2] + 100 * labels[:, None, None, 3]
    images[:, : size // 2, :, 2] = 200 * labels[:, None, None, 3]
    source = ArraySource("toy", list("abcd"), train=(images, labels), val=(images, labels))
    config = get_config()
    config.model.width = 4
    config.batch_size = 64
    config.num_steps = 60
    config.learning_rate = 2e-2
    config.loss.adaptive = True
    config.loss.adaptive_step_size = 1.0
    config.augment.cutout = 0.0
    config = validate_config(config)
    mesh = parallel.make_mesh(jax.devices()[:1])
    programs = build_programs(
        config, num_classes=4, image_size=size, total_steps=config.num_steps, mesh=mesh
    )
    state = programs.init(jax.random.key(0))
    deltas, gammas = [], []
    for step in range(config.num_steps):
        epoch, start = divmod(step, n // 64)
        batch = next(
            source.batches(
                BatchRequest(
                    "train",
                    batch_size=64,
                    seed=0,
                    epoch=epoch,
                    start_batch=start,
                    shuffle=True,
                    drop_remainder=True,
                )
            )
        )
        state, metrics = programs.train(state, parallel.shard_batch(batch, mesh))
        deltas.append(float(metrics["delta_p"]))
        gammas.append(float(metrics["gamma_neg"]))
    print("gamma_neg", np.round(gammas[::6], 3), "delta_p", np.round(deltas[::6], 3))
    target = config.loss.delta_p_target
    # Δp starts below the target (positives learnt faster than negatives are rejected): γ− falls,
    # which weights the negatives up, until Δp reaches the target.
    assert np.mean(deltas[:10]) < target - 0.05
    assert gammas[-1] < gammas[0] - 2.0
    reached = np.flatnonzero(np.abs(np.array(deltas) - target) < 0.03)
    assert reached.size and reached[0] < config.num_steps // 2


def test_nonfinite_batch_leaves_the_state_unchanged_and_is_counted(runs, problem):
    programs, mesh, state, _ = runs[1]
    state = jax.tree.map(lambda x: x.copy(), state)  # the step donates its input state
    batch = dict(problem[2][0])
    before = jax.device_get(state)
    bad = dict(batch, labels=np.full_like(batch["labels"], np.nan))
    state, metrics = programs.train(state, parallel.shard_batch(bad, mesh))
    after = jax.device_get(state)
    assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
    for name in ("params", "batch_stats", "opt_state", "ema_params", "gamma_neg", "rng"):
        for a, b in zip(
            jax.tree.leaves(getattr(before, name)),
            jax.tree.leaves(getattr(after, name)),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert int(after.step) == int(before.step) + 1
    assert int(after.num_skipped) == int(before.num_skipped) + 1
    assert int(after.consecutive_nonfinite) == 1
    state, metrics = programs.train(state, parallel.shard_batch(batch, mesh))
    assert float(metrics["skipped"]) == 0.0
    assert int(state.consecutive_nonfinite) == 0 and int(state.num_skipped) == 1


def test_eval_step_probabilities_and_mask(runs, problem):
    programs, mesh, state, _ = runs[1]
    source = problem[1]
    batch = next(
        source.batches(
            BatchRequest("val", batch_size=48, seed=0, shuffle=False, drop_remainder=False)
        )
    )
    out = jax.device_get(programs.eval(state, parallel.shard_batch(batch, mesh)))
    assert out["probs"].shape == out["probs_ema"].shape == batch["labels"].shape
    assert out["probs"].dtype == np.float32
    assert np.all((out["probs"] >= 0) & (out["probs"] <= 1))
    np.testing.assert_array_equal(out["mask"], batch["mask"])
    np.testing.assert_array_equal(out["labels"], batch["labels"])
    assert not np.allclose(out["probs"], out["probs_ema"])


def test_weight_decay_applies_to_kernels_only():
    params = {
        "Conv_0": {"kernel": np.ones((3, 3, 3, 4), np.float32)},
        "BatchNorm_0": {"scale": np.ones(4, np.float32), "bias": np.ones(4, np.float32)},
        "Dense_0": {"kernel": np.ones((4, 2), np.float32), "bias": np.ones(2, np.float32)},
    }
    mask = kernel_mask(params)
    assert mask["Conv_0"]["kernel"] and mask["Dense_0"]["kernel"]
    assert not (mask["Dense_0"]["bias"] or mask["BatchNorm_0"]["scale"])
    zeros = jax.tree.map(np.zeros_like, params)
    for name in ("adam", "adamw"):
        tx = create_optimizer(name, schedule=optax.constant_schedule(0.1), weight_decay=0.5)
        updates, _ = tx.update(zeros, tx.init(params), params)
        assert np.all(np.asarray(updates["Dense_0"]["kernel"]) < 0), name
        assert np.all(np.asarray(updates["Dense_0"]["bias"]) == 0), name
        assert np.all(np.asarray(updates["BatchNorm_0"]["scale"]) == 0), name


def test_schedules():
    onecycle = create_schedule("onecycle", learning_rate=1.0, total_steps=100, warmup_fraction=0.2)
    assert float(onecycle(0)) == pytest.approx(1 / 25)
    assert float(onecycle(20)) == pytest.approx(1.0)
    assert float(onecycle(100)) < 1e-4
    cosine = create_schedule("cosine", learning_rate=1.0, total_steps=100, warmup_fraction=0.1)
    assert float(cosine(0)) == 0.0 and float(cosine(10)) == pytest.approx(1.0)
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-7)
    assert float(create_schedule("constant", learning_rate=0.3, total_steps=5)(4)) == 0.3
    with pytest.raises(ValueError, match="schedule='step'"):
        create_schedule("step", learning_rate=1.0, total_steps=10)


def _partial_batch():
    labels = np.array([[1.0, 0.0, -1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]], np.float32)
    return {"labels": labels, "mask": np.array([True, True, False])}


@pytest.mark.parametrize(
    ("loss", "expected_where", "reads_raw"),
    [
        # unknown labels left out, padding row out
        ({"name": "asl"}, [[1, 1, 0], [0, 1, 0], [0, 0, 0]], False),
        # unknown labels counted as negatives
        ({"name": "asl", "unknown": "negative"}, [[1, 1, 1], [1, 1, 1], [0, 0, 0]], False),
        # the assume-negative methods always count them, whatever loss.unknown says
        ({"name": "wan"}, [[1, 1, 1], [1, 1, 1], [0, 0, 0]], False),
        # the selective loss reads them itself
        ({"name": "selective"}, [[1, 1, 1], [1, 1, 1], [0, 0, 0]], True),
    ],
)
def test_loss_labels_treat_unknown_labels_as_the_loss_asks(loss, expected_where, reads_raw):
    from asl_jax.training.loss_registry import LossConfig
    from asl_jax.training.step import loss_labels

    batch = _partial_batch()
    got = loss_labels(batch, LossConfig(**loss))
    np.testing.assert_array_equal(got.loss_where, np.asarray(expected_where, bool))
    expected_labels = batch["labels"] if reads_raw else np.maximum(batch["labels"], 0)
    np.testing.assert_array_equal(got.loss_labels, expected_labels)
    np.testing.assert_array_equal(got.stats_labels, np.maximum(batch["labels"], 0))
    if reads_raw:  # the statistics never count a label the loss decides about itself
        np.testing.assert_array_equal(got.stats_where, [[1, 1, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(got.rows[:, 0], batch["mask"])


def test_selective_loss_carries_the_same_class_prior_on_one_and_eight_devices(problem):
    import dataclasses

    from asl_jax.data.annotation import annotate

    config, source, batches = problem
    loss = dataclasses.replace(config.loss, name="selective", adaptive=False, prior_decay=0.5)
    config = dataclasses.replace(config, loss=loss)
    single = [{**b, "labels": annotate(b["labels"], "single_positive", seed=i)}
              for i, b in enumerate(batches)]  # fmt: skip
    (*_, one, metrics_one), (*_, eight, metrics_eight) = (
        _run(config, source, single, devices) for devices in (jax.devices()[:1], jax.devices())
    )
    prior = np.asarray(one.class_prior)
    assert prior.shape == (source.num_classes,) and np.all(prior > 0)
    np.testing.assert_allclose(np.asarray(eight.class_prior), prior, rtol=1e-5)
    np.testing.assert_allclose(metrics_eight["loss"], metrics_one["loss"], rtol=1e-4)
