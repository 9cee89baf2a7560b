"""Tests of asl_jax.training.loss_registry: each loss reads exactly the fields it declares."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asl_jax.training.loss_registry import (
    COMMON_FIELDS,
    LOSS_NAMES,
    LOSSES,
    LossConfig,
    loss_spec,
    resolve_class_weights,
)
from asl_jax.training.step import elementwise_loss

LOSS_FIELDS = [f.name for f in dataclasses.fields(LossConfig) if f.name not in COMMON_FIELDS]
PERTURBED = {
    "gamma_pos": 1.0,
    "gamma_neg": 2.0,
    "focal_gamma": 3.0,
    "clip": 0.2,
    "splc_tau": 0.9,
    "likelihood_topk": 0,
    "rejection_per_epoch": 0.05,
    "unknown": "negative",
    "prior_decay": 0.5,
}
#: The training progress the losses see: after one warm-up epoch (SPLC corrects), before a
#: perturbed one.
EPOCH = 1.5


def _value_and_grad(loss):
    # 30 classes: enough unknown labels that the selective loss's top-k does not take them all.
    logits = jnp.linspace(-4.0, 4.0, 120).reshape(4, 30)
    labels = jnp.asarray([1.0, -1.0, 0.0])[jnp.arange(120).reshape(4, 30) % 3]
    if loss.spec.unknown_labels(loss) != "read":
        labels = jnp.maximum(labels, 0.0)
    prior = jnp.linspace(0.0, 0.1, 30)  # half the classes above the prior threshold

    def total(z):
        return elementwise_loss(
            z, labels, loss, loss.gamma_neg, epoch=EPOCH, class_prior=prior
        ).sum()

    value, grad = jax.value_and_grad(total)(logits)
    return np.concatenate([np.ravel(value), np.ravel(grad)])


def _changed(field, value):
    if isinstance(value, bool):
        return not value
    return PERTURBED[field] if field in PERTURBED else value * 2 + 0.25


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("field", LOSS_FIELDS)
def test_loss_reads_exactly_its_declared_fields(name, field):
    loss = LossConfig(name=name)
    changed = dataclasses.replace(loss, **{field: _changed(field, getattr(loss, field))})
    differs = not np.allclose(_value_and_grad(loss), _value_and_grad(changed))
    # The adaptive rule's fields act in the step, not in the element-wise loss.
    declared = field in LOSSES[name].fields
    assert differs == declared, f"{name} {'ignores' if declared else 'reads'} loss.{field}"


def test_declared_fields_are_loss_config_fields():
    names = {f.name for f in dataclasses.fields(LossConfig)}
    for spec in LOSSES.values():
        assert spec.fields <= names, spec.name


def test_unknown_loss_names_the_known_ones():
    with pytest.raises(ValueError, match=r"loss\.name='nope': expected one of bce, focal, asl"):
        loss_spec("nope")


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_class_and_positive_weights_scale_each_element(name):
    logits = jnp.linspace(-4.0, 4.0, 24).reshape(4, 6)
    labels = (jnp.arange(24).reshape(4, 6) % 3 == 0).astype(jnp.float32)
    prior = jnp.zeros(6)
    plain = elementwise_loss(logits, labels, LossConfig(name=name), 4.0, class_prior=prior)
    weights = np.array([1.0, 2.0, 0.0, 0.5, 1.0, 3.0])
    weighted = LossConfig(name=name, class_weights=",".join(map(str, weights)), pos_weight=2.5)
    expected = plain * weights * np.where(labels > 0, 2.5, 1.0)
    got = elementwise_loss(logits, labels, weighted, 4.0, class_prior=prior)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_weights_need_one_per_class_and_resolved_inverse_frequency():
    labels = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"has 2 weights; expected one per class \(3\)"):
        elementwise_loss(labels, labels, LossConfig(class_weights="1,2"), 4.0)
    with pytest.raises(ValueError, match="resolved from the train labels"):
        elementwise_loss(labels, labels, LossConfig(class_weights="inverse_frequency"), 4.0)


def test_inverse_frequency_weights():
    labels = np.array([[1, 0, 0], [1, 1, 0], [1, -1, 0], [0, 0, 0]])  # 3, 1 and 0 positives
    weights = np.array(resolve_class_weights("inverse_frequency", labels).split(","), float)
    inverse = 1 / np.array([4.0, 2.0, 1.0])
    np.testing.assert_allclose(weights, inverse / inverse.mean(), rtol=1e-5)
    assert weights.mean() == pytest.approx(1.0, rel=1e-5)
    assert resolve_class_weights("1,2,3", labels) == "1,2,3"


def test_inverse_frequency_is_resolved_and_recorded_when_a_run_starts(tmp_path):
    import json

    from asl_jax.data.base import ArraySource
    from asl_jax.training.config import Config, ConfigError
    from asl_jax.training.setup import _resolve_class_weights

    images = np.zeros((4, 8, 8, 3), np.uint8)
    labels = np.array([[1, 0], [1, 0], [1, 1], [0, 0]], np.float32)
    source = ArraySource("toy", ["a", "b"], train=(images, labels), val=(images, labels))
    config = Config(loss=LossConfig(class_weights="inverse_frequency"))
    resolved = _resolve_class_weights(config, source)
    assert config.loss.class_weights == "inverse_frequency"  # the caller's config is kept
    assert resolved.loss.class_weights == resolve_class_weights("inverse_frequency", labels)
    assert json.loads(json.dumps(resolved.to_dict()))["loss"]["class_weights"].count(",") == 1
    config = Config(loss=LossConfig(class_weights="1,2,3"))
    with pytest.raises(ConfigError, match=r"has 3 weights; data\.name='shapes' has 2 classes"):
        _resolve_class_weights(config, source)


def test_splc_corrects_only_after_its_warm_up():
    logits = jnp.linspace(-4.0, 4.0, 24).reshape(4, 6)
    labels = (jnp.arange(24).reshape(4, 6) % 3 == 0).astype(jnp.float32)
    loss = LossConfig(name="splc", splc_warmup_epochs=1.0)
    margin = LossConfig(name="focal_margin")
    before = elementwise_loss(logits, labels, loss, 4.0, epoch=0.99)
    np.testing.assert_allclose(before, elementwise_loss(logits, labels, margin, 4.0))
    outside_training = elementwise_loss(logits, labels, loss, 4.0)
    np.testing.assert_allclose(outside_training, before)
    after = elementwise_loss(logits, labels, loss, 4.0, epoch=1.0)
    corrected = jnp.where((labels == 0) & (jax.nn.sigmoid(logits) > 0.6), 1.0, labels)
    assert int(jnp.sum(corrected != labels)) > 0
    np.testing.assert_allclose(after, elementwise_loss(logits, corrected, margin, 4.0))


@pytest.mark.parametrize("name", [n for n in LOSS_NAMES if not LOSSES[n].compared])
def test_losses_for_missing_labels_train_in_the_step(name, tmp_path):
    """A few steps of the jitted train step, with the epoch the step derives (SPLC's warm-up
    of half an epoch passes within them): finite losses, and the loss falls."""
    from asl_jax.data import ArraySource, BatchRequest
    from asl_jax.training import Config, build_programs, make_mesh, shard_batch

    rng = np.random.default_rng(0)
    labels = (rng.random((32, 4)) < 0.3).astype(np.float32)
    images = (labels[:, None, None, :3] * 200 + rng.integers(0, 40, (32, 8, 8, 3))).astype(np.uint8)
    source = ArraySource("toy", list("abcd"), train=(images, labels), val=(images, labels))
    config = dataclasses.replace(
        Config(batch_size=16, num_steps=8, learning_rate=0.02),
        loss=LossConfig(name=name, splc_warmup_epochs=0.5),
    )
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, width=4))
    mesh = make_mesh(jax.devices()[:1])
    programs = build_programs(
        config, num_classes=4, image_size=8, total_steps=8, mesh=mesh, steps_per_epoch=2
    )
    state = programs.init(jax.random.key(0))
    losses = []
    for step in range(8):
        request = BatchRequest.training(
            batch_size=16, seed=0, epoch=step // 2, start_batch=step % 2
        )
        state, metrics = programs.train(state, shard_batch(next(source.batches(request)), mesh))
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def test_positive_weight_leaves_unknown_labels_of_the_selective_loss_as_negatives():
    logits = jnp.linspace(-2.0, 2.0, 6).reshape(2, 3)
    labels = jnp.asarray([[1.0, -1.0, 0.0], [-1.0, 1.0, -1.0]])
    prior = jnp.zeros(3)
    plain = elementwise_loss(logits, labels, LossConfig(name="selective"), 4.0, class_prior=prior)
    weighted = LossConfig(name="selective", pos_weight=2.5)
    got = elementwise_loss(logits, labels, weighted, 4.0, class_prior=prior)
    np.testing.assert_allclose(got, plain * np.where(labels > 0, 2.5, 1.0), rtol=1e-6)
