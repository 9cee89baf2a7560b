"""Tests of asl_jax.training.state: every TrainState field is checkpointed and restored."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asl_jax.compile_options import FAST_COMPILE
from asl_jax.models import create_model
from asl_jax.training.checkpoint import Checkpointer
from asl_jax.training.state import TrainState, checkpoint_items, create_train_state

STATIC_FIELDS = {"apply_fn", "tx"}
ARRAY_FIELDS = [f.name for f in dataclasses.fields(TrainState) if f.name not in STATIC_FIELDS]


@functools.cache
def _init():
    # Jitted as the training loop does: run eagerly, the initialisers dispatch and compile a few
    # hundred small ops one by one (tens of times slower than one jitted program).
    model = create_model("cnn", num_classes=3, width=4)
    return jax.jit(
        lambda key: create_train_state(
            key,
            model,
            optax.adam(1e-3),
            image_shape=(8, 8, 3),
            gamma_neg=4.0,
            class_prior_classes=3,  # every field present, the optional class prior included
        ),
        compiler_options=FAST_COMPILE,
    )


def _state():
    return _init()(jax.random.key(0))


def _perturbed(state):
    # A different value in every leaf, so that a field that is not restored is noticed.
    leaves, treedef = jax.tree.flatten(checkpoint_items(state))
    changed = [
        jnp.asarray(leaf) + jnp.asarray(i + 1, jnp.asarray(leaf).dtype)
        for i, leaf in enumerate(leaves)
    ]
    return state.replace(**jax.tree.unflatten(treedef, changed))


def test_checkpoint_items_are_the_array_fields():
    assert sorted(checkpoint_items(_state())) == sorted(ARRAY_FIELDS)


def test_a_state_without_class_prior_keeps_the_earlier_checkpoint_layout():
    # Runs whose loss does not read the class priors save what they saved before the field.
    assert "class_prior" not in checkpoint_items(_state().replace(class_prior=None))


@pytest.mark.parametrize("field", ARRAY_FIELDS)
def test_field_survives_save_and_restore(tmp_path, field):
    fresh = _state()
    saved = _perturbed(fresh)
    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save(saved)
    ckpt.wait()
    restored = ckpt.restore(fresh)
    ckpt.close()
    expected, actual = getattr(saved, field), getattr(restored, field)
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    before = jax.tree.leaves(getattr(fresh, field))
    assert before, f"{field} has no arrays to check"
    for got, want, old in zip(
        jax.tree.leaves(actual), jax.tree.leaves(expected), before, strict=True
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert not np.array_equal(np.asarray(got), np.asarray(old))
