"""Tests of asl_jax.models.efficientnet: equal to timm's ``efficientnet_b0``…``b4`` and
``tf_efficientnet_lite0``…``lite4``, to torchvision's ``efficientnet_b0``…``b4`` read through the
same layout, and to the ``efficientnet_lite_pytorch`` model (``efficientnet_pytorch`` names).

Random weights and random batch-norm statistics (nothing is downloaded); logits to 1e-4 of the
largest in eval and train mode, and a strict round trip back to torch. The default run has one
small case per family (odd input sides: the TensorFlow padding of the Lite models is asymmetric
there); the published resolutions are ``slow``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asl_jax.compile_options import FAST_COMPILE
from asl_jax.models import MODELS, create_model
from asl_jax.models.efficientnet import VARIANTS, round_channels, stage_depths
from asl_jax.models.pretrained import from_torch, to_torch
from tests.models.conftest import torch_train_step

NUM_CLASSES = 5
#: The resolution each variant was trained at (timm's pretrained configs).
RESOLUTION = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380}
RESOLUTION.update({f"lite{i}": size for i, size in enumerate((224, 240, 260, 280, 300))})


def _slow(names):
    return [pytest.param(name, marks=pytest.mark.slow) for name in names]


def _randomise(model, seed=0):
    """Random batch-norm statistics and affine parameters (a fresh torch model has 0 / 1)."""
    torch = pytest.importorskip("torch")

    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            for tensor in (module.running_mean, module.weight, module.bias):
                tensor.data.copy_(torch.randn(tensor.shape, generator=gen) * 0.5)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def _timm(name):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return _randomise(timm.create_model(VARIANTS[name][1], num_classes=NUM_CLASSES))


def _torchvision(name):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    # Without stochastic depth and dropout, so that train mode is deterministic.
    model = torchvision.models.get_model(
        name, weights=None, num_classes=NUM_CLASSES, stochastic_depth_prob=0.0, dropout=0.0
    )
    return _randomise(model)


def _efficientnet_lite_pytorch(name, size):
    torch = pytest.importorskip("torch")
    package = pytest.importorskip("efficientnet_lite_pytorch")
    torch.manual_seed(0)
    model = package.EfficientNet.from_name(
        # Its "SAME" padding is computed once, for this input size.
        name.replace("efficientnet_", "efficientnet-"),
        num_classes=NUM_CLASSES,
        image_size=size,
    )
    return _randomise(model)


def _images(size, seed=0):
    return np.random.default_rng(seed).uniform(size=(2, size, size, 3)).astype(np.float32)


def _torch_logits(model, images):
    torch = pytest.importorskip("torch")

    with torch.no_grad():
        return model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def _assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def _eval_equal(name, reference, size):
    state_dict = reference.state_dict()
    variables = from_torch(name, state_dict, num_classes=NUM_CLASSES, image_size=size)
    model = create_model(name, num_classes=NUM_CLASSES, normalization="none")
    images = _images(size)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=FAST_COMPILE)
    _assert_close(np.asarray(apply(variables, images)), _torch_logits(reference, images))
    return variables


def _strict_round_trip(name, reference, variables):
    torch = pytest.importorskip("torch")

    back = to_torch(name, variables)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("efficientnet_b0", 37),
        ("efficientnet_lite0", 37),
        *[
            pytest.param(name, RESOLUTION[name.split("_")[1]], marks=pytest.mark.slow)
            for name in VARIANTS
        ],
    ],
)
def test_equals_timm_and_round_trips(name, size):
    reference = _timm(name)
    variables = _eval_equal(name, reference, size)
    _strict_round_trip(name, reference, variables)


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_lite0"])
def test_train_mode_batch_norm_equals_timm(name):
    reference = _timm(name)
    size = 33
    state_dict = reference.state_dict()
    variables = from_torch(name, state_dict, num_classes=NUM_CLASSES, image_size=size)
    images = _images(size, seed=1)
    expected, after = torch_train_step(reference, images.transpose(0, 3, 1, 2).copy())
    model = create_model(name, num_classes=NUM_CLASSES, normalization="none")
    train = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
        compiler_options=FAST_COMPILE,
    )
    logits, updates = train(variables, images)
    _assert_close(np.asarray(logits), expected)
    stats = to_torch(name, {"params": variables["params"], **jax.device_get(updates)})
    for key in (k for k in stats if k.endswith("running_var") or k.endswith("running_mean")):
        np.testing.assert_allclose(stats[key], after[key], rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.parametrize(
    "name",
    [
        "efficientnet_b0",
        *[pytest.param(f"efficientnet_b{i}", marks=pytest.mark.slow) for i in (1, 2, 3, 4)],
    ],
)
def test_torchvision_names_read_through_the_same_layout(name):
    reference = _torchvision(name)
    size = 35 if name == "efficientnet_b0" else RESOLUTION[name.split("_")[1]]
    variables = _eval_equal(name, reference, size)
    assert set(to_torch(name, variables)) >= {"conv_stem.weight", "blocks.1.0.conv_dw.weight"}


@pytest.mark.parametrize(
    "name",
    [
        "efficientnet_lite0",
        *[pytest.param(f"efficientnet_lite{i}", marks=pytest.mark.slow) for i in (1, 2, 3, 4)],
    ],
)
def test_efficientnet_pytorch_names_are_renamed_by_position(name):
    """The ``efficientnet_lite_pytorch`` model numbers its blocks through all stages."""
    size = 37 if name == "efficientnet_lite0" else RESOLUTION[name.split("_")[1]]
    reference = _efficientnet_lite_pytorch(name, size)
    assert "_blocks.1._expand_conv.weight" in reference.state_dict()
    _eval_equal(name, reference, size)


def test_a_block_beyond_the_architecture_is_named():
    state_dict = to_torch("efficientnet_lite0", _zeros("efficientnet_lite0"))
    state_dict["_blocks.99._depthwise_conv.weight"] = np.zeros((8, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"block 99; the model has 16 blocks"):
        from_torch("efficientnet_lite0", state_dict, num_classes=NUM_CLASSES, image_size=32)


def _shapes(name, num_classes=NUM_CLASSES, size=32, **kwargs):
    model = create_model(name, num_classes=num_classes, **kwargs)
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )


def _zeros(name):
    return jax.tree.map(lambda s: np.zeros(s.shape, np.float32), _shapes(name))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameter_counts_match_timm(name):
    timm = pytest.importorskip("timm")
    reference = timm.create_model(VARIANTS[name][1], num_classes=1000)
    expected = sum(p.numel() for p in reference.parameters())
    params = _shapes(name, num_classes=1000)["params"]
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == expected


def test_scaling_rules():
    assert [round_channels(c * 1.4) for c in (16, 24, 40, 80, 112, 192, 320)] == [
        24, 32, 56, 112, 160, 272, 448,
    ]  # fmt: skip
    assert stage_depths(1.8, lite=True) == (1, 4, 4, 6, 6, 8, 1)
    assert stage_depths(1.8, lite=False) == (2, 4, 4, 6, 6, 8, 2)


def test_registry_entries():
    for name in VARIANTS:
        layout = MODELS[name].torch
        assert layout.head == "classifier" and layout.source == "timm"
        expected = "inception" if "lite" in name else "imagenet"
        assert layout.normalization == expected == MODELS[name].normalization


def test_width_scales_every_layer_for_small_models():
    default = _shapes("efficientnet_b0")["params"]
    small = _shapes("efficientnet_b0", width=16)["params"]
    assert small["conv_stem"]["kernel"].shape == (3, 3, 3, 16)
    assert small["conv_head"]["kernel"].shape[-1] == 640
    assert default["conv_head"]["kernel"].shape[-1] == 1280
