"""Tests of asl_jax.training.loss_registry: each loss reads exactly the fields it declares."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asl_jax.training.loss_registry import COMMON_FIELDS, LOSS_NAMES, LOSSES, loss_spec
from asl_jax.training.step import LossConfig, elementwise_loss

LOSS_FIELDS = [f.name for f in dataclasses.fields(LossConfig) if f.name not in COMMON_FIELDS]
PERTURBED = {"gamma_pos": 1.0, "gamma_neg": 2.0, "focal_gamma": 3.0, "clip": 0.2}


def _value_and_grad(loss):
    logits = jnp.linspace(-4.0, 4.0, 24).reshape(4, 6)
    labels = (jnp.arange(24).reshape(4, 6) % 3 == 0).astype(jnp.float32)

    def total(z):
        return elementwise_loss(z, labels, loss, loss.gamma_neg).sum()

    value, grad = jax.value_and_grad(total)(logits)
    return np.concatenate([np.ravel(value), np.ravel(grad)])


def _changed(field, value):
    if isinstance(value, bool):
        return not value
    return PERTURBED.get(field, value * 2 + 0.25)


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
