"""Tests of asl_jax.models: output shapes and dtypes, parameter counts, dtype policy, errors.

Shapes come from ``jax.eval_shape`` (nothing is compiled), except one real forward pass of the
small CNN.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asl_jax.models import MODEL_NAMES, create_model, resolve_dtype


def _abstract_variables(model, image_size=32):
    return jax.eval_shape(
        lambda: model.init(
            jax.random.key(0), jnp.zeros((2, image_size, image_size, 3)), train=False
        )
    )


def _num_params(variables):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize(
    ("name", "expected"),
    # torchvision's parameter counts for 1000 classes: the same architectures.
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("resnet101", 44_549_160),
    ],
)
def test_resnet_parameter_counts_match_the_reference_architectures(name, expected):
    model = create_model(name, num_classes=1000)
    assert _num_params(_abstract_variables(model, 64)) == expected


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logits_are_float32_and_params_float32_for_every_compute_dtype(name, dtype):
    model = create_model(name, num_classes=7, dtype=dtype)
    variables = _abstract_variables(model)
    assert {x.dtype for x in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}
    # ViT and ConvNeXt (layer norms) have neither batch norm nor batch statistics.
    has_batch_norm = not name.startswith(("vit", "convnext"))
    assert ("batch_stats" in variables) == has_batch_norm
    out, updates = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((3, 32, 32, 3)), train=True, mutable=["batch_stats"]),
        variables,
    )
    assert out.shape == (3, 7)
    assert out.dtype == jnp.float32
    assert set(updates) == ({"batch_stats"} if has_batch_norm else set())


def test_small_cnn_forward_and_batch_norm_modes():
    model = create_model("cnn", num_classes=5, width=4)
    x = np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype(np.float32)

    # One compiled program (eager Flax would compile every op separately: much slower), without
    # XLA's expensive optimisations (it runs once).
    @functools.partial(
        jax.jit,
        compiler_options={
            "xla_backend_optimization_level": 0,
            "xla_llvm_disable_expensive_passes": True,
        },
    )
    def run(x):
        variables = model.init(jax.random.key(0), x[:1], train=False)
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return variables, logits, updates, model.apply(variables, x, train=False)

    variables, logits, updates, eval_logits = run(x)
    assert logits.shape == (4, 5) and bool(jnp.all(jnp.isfinite(logits)))
    # Training mode updates the running statistics; inference mode uses them.
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    assert eval_logits.shape == (4, 5)
    assert not np.allclose(eval_logits, logits)  # running vs batch statistics
    # The width sets the channels of the first stage.
    kernel = variables["params"]["Conv_0"]["kernel"]
    assert kernel.shape == (3, 3, 3, 4)


def test_resolve_dtype_auto_is_float32_on_cpu():
    assert jax.default_backend() == "cpu"
    assert resolve_dtype("auto") == jnp.float32
    assert resolve_dtype("bfloat16") == jnp.bfloat16
    assert resolve_dtype(jnp.float32) == jnp.float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "vgg", "num_classes": 3}, "model.name='vgg': expected one of cnn, resnet18"),
        ({"name": "cnn", "num_classes": 0}, "num_classes=0"),
        ({"name": "cnn", "num_classes": 3, "dtype": "int8"}, "model.dtype='int8'"),
        ({"name": "cnn", "num_classes": 3, "width": -1}, "model.width=-1"),
        (
            {"name": "resnet18", "num_classes": 3, "normalization": "imagent"},
            "model.normalization='imagent': expected one of auto, imagenet",
        ),
    ],
)
def test_create_model_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        create_model(**kwargs)


@pytest.mark.parametrize(
    ("name", "auto"), [("cnn", "centered"), ("resnet18", "imagenet"), ("resnet101", "imagenet")]
)
def test_normalization_is_a_model_attribute(name, auto):
    assert create_model(name, num_classes=3).normalization == auto
    assert create_model(name, num_classes=3, normalization="none").normalization == "none"


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_variables_are_named_as_torch_modules(name):
    """conv1, bn1, layer1/0/conv1, layer2/0/downsample/0, fc: the names the torch layout maps
    (the values are compared with torchvision in test_models_pretrained.py)."""
    params = _abstract_variables(create_model(name, num_classes=3))["params"]
    assert set(params) == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"}
    assert set(params["layer2"]["0"]["downsample"]) == {"0", "1"}
    assert params["conv1"]["kernel"].shape == (7, 7, 3, 64)
