"""Tests of asl_jax.models.convnext: equal to timm's and torchvision's ``convnext_tiny``,
``convnext_small`` and ``convnext_base`` (random weights, layer scales and norms; logits to 1e-4
of the largest in eval and train mode, a strict round trip back to timm), and stochastic depth as
a training option. The default run has one small case; the full sizes are ``slow``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asl_jax.compile_options import FAST_COMPILE
from asl_jax.models import MODELS, create_model
from asl_jax.models.convnext import VARIANTS, ConvNeXt, flax_to_torch, torch_to_flax
from asl_jax.models.pretrained import from_torch, to_torch

NUM_CLASSES = 5


def _randomise(model, seed=0):
    """Every parameter random: fresh models have unit norms and layer scales of 1e-6, which
    would hide a wrong block branch."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        parameter.data.copy_(torch.randn(parameter.shape, generator=gen) * 0.1)
    return model.eval()


def _reference(source, name, **kwargs):
    pytest.importorskip("torch")
    if source == "timm":
        timm = pytest.importorskip("timm")
        return _randomise(timm.create_model(name, num_classes=NUM_CLASSES, **kwargs))
    torchvision = pytest.importorskip("torchvision")
    # Without stochastic depth, so that train mode is deterministic.
    model = torchvision.models.get_model(
        name, weights=None, num_classes=NUM_CLASSES, stochastic_depth_prob=0.0, **kwargs
    )
    return _randomise(model)


def _images(size, seed=0):
    return np.random.default_rng(seed).uniform(size=(2, size, size, 3)).astype(np.float32)


def _torch_logits(model, images, train=False):
    import torch

    model.train(train)
    try:
        with torch.no_grad():
            return model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    finally:
        model.eval()


def _assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def _apply(model, variables, images, train=False):
    def run(v, x):
        if train:  # layer norms only: training changes nothing without stochastic depth
            return model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)})
        return model.apply(v, x, train=False)

    return np.asarray(jax.jit(run, compiler_options=FAST_COMPILE)(variables, images))


def _slow(names):
    return [pytest.param(*n, marks=pytest.mark.slow) for n in names]


@pytest.mark.parametrize(
    ("source", "name", "size"),
    [
        ("timm", "convnext_tiny", 64),
        ("torchvision", "convnext_tiny", 64),
        *_slow((s, n, 224) for s in ("timm", "torchvision") for n in VARIANTS),
    ],
)
def test_equals_the_reference_in_eval_and_train_mode(source, name, size):
    reference = _reference(source, name)
    variables = from_torch(name, reference.state_dict(), num_classes=NUM_CLASSES, image_size=size)
    model = create_model(name, num_classes=NUM_CLASSES, normalization="none")
    images = _images(size)
    _assert_close(_apply(model, variables, images), _torch_logits(reference, images))
    _assert_close(
        _apply(model, variables, images, train=True), _torch_logits(reference, images, True)
    )


@pytest.mark.parametrize(
    "name", ["convnext_tiny", *_slow((n,) for n in ("convnext_small", "convnext_base"))]
)
def test_round_trips_strictly_into_timm(name):
    torch = pytest.importorskip("torch")

    reference = _reference("timm", name)
    state_dict = reference.state_dict()
    variables = from_torch(name, state_dict, num_classes=NUM_CLASSES, image_size=32)
    back = to_torch(name, variables)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    for key, value in state_dict.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def test_layer_scale_converts_both_ways():
    state_dict = {"stages.0.blocks.0.gamma": np.arange(3, dtype=np.float32)}
    variables = torch_to_flax(state_dict)
    assert variables["params"]["stages"]["0"]["blocks"]["0"]["gamma"].shape == (3,)
    np.testing.assert_array_equal(flax_to_torch(variables)["stages.0.blocks.0.gamma"], [0, 1, 2])


def _small(**kwargs):
    return ConvNeXt(num_classes=3, depths=(1, 1, 2, 1), width=8, **kwargs)


def test_stochastic_depth_only_in_training():
    model = _small(drop_path_rate=0.5)
    images = jnp.asarray(_images(32))
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images)
    # Layer scales of 1 so that the residual branches matter.
    variables = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.ones_like(v) if p[-1].key == "gamma" else v, variables
    )

    @jax.jit
    def run(variables, images):
        def train(module, seed):
            rngs = {"dropout": jax.random.key(seed)}
            return module.apply(variables, images, train=True, rngs=rngs)

        evaluated = model.apply(variables, images, train=False)
        return evaluated, train(_small(), 1), train(model, 1), train(model, 2)

    eval_logits, plain, dropped_1, dropped_2 = run(variables, images)
    np.testing.assert_allclose(plain, eval_logits, rtol=1e-5, atol=1e-5)
    assert not np.allclose(dropped_1, dropped_2)


def test_drop_path_rate_is_refused_for_models_without_it():
    with pytest.raises(ValueError, match="has no stochastic depth"):
        create_model("resnet18", num_classes=3, drop_path_rate=0.1)
    with pytest.raises(ValueError, match=r"expected a value in \[0, 1\)"):
        _small(drop_path_rate=1.0).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameter_counts_match_timm(name):
    timm = pytest.importorskip("timm")
    expected = sum(p.numel() for p in timm.create_model(name, num_classes=1000).parameters())
    model = create_model(name, num_classes=1000)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"])) == expected


def test_registry_entries():
    for name in VARIANTS:
        spec = MODELS[name]
        assert spec.drop_path and spec.torch.head == "head.fc"
        assert spec.torch.normalization == spec.normalization == "imagenet"
