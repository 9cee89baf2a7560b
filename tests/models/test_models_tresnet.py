"""Tests of asl_jax.models.tresnet: equality with timm's TResNet, converters, shapes, dtypes.

The timm comparisons (random weights, random batch-norm statistics) are skipped without timm.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asl_jax.models import create_model
from asl_jax.models import tresnet as tr

_FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _timm_model(name, **kwargs):
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial statistics and scales (timm zero-initialises some)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 1.5, generator=gen)
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.bias.normal_(0.0, 0.1, generator=gen)
    return model.eval()


def _state_dict(model):
    # Copies: .numpy() shares the tensors' storage, which a train-mode forward updates in place.
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _compare(timm_model, flax_model, size, dtype=np.float32):
    """Logits of both models on the same images, to 1e-4 of the largest in float32.

    ``dtype=np.float64`` compares both in float64 (timm's model in double, Flax's under
    ``jax.enable_x64`` with float64 weights) to 1e-6, the float32 rounding of the logits Flax
    returns. That is the check for the full networks at 448 px: with random weights and
    statistics their activations grow to logits in the thousands, and there float32 itself is
    off by up to 0.4% (torch's own float32 logits against its float64 ones), so a float32
    comparison would measure rounding, not the architecture.
    """
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).uniform(size=(2, size, size, 3)).astype(dtype)
    variables = jax.tree.map(lambda a: a.astype(dtype), tr.torch_to_flax(_state_dict(timm_model)))
    with torch.no_grad():
        torch_model = timm_model.double() if dtype == np.float64 else timm_model
        expected = torch_model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    with jax.enable_x64(dtype == np.float64):
        model = flax_model.clone(dtype=jnp.float64) if dtype == np.float64 else flax_model
        apply = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=_FAST)
        got = np.asarray(apply(variables, x))
    tolerance = 1e-6 if dtype == np.float64 else 1e-4
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance * scale)
    return variables


@pytest.mark.parametrize("name", ["tresnet_m", "tresnet_l"])
def test_converters_round_trip_through_timm(name):
    torch = pytest.importorskip("torch")
    timm_model = _timm_model(name)
    variables = tr.torch_to_flax(_state_dict(timm_model))
    back = tr.flax_to_torch(variables)
    expected = {k for k in timm_model.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(back) == expected
    timm_model.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    for key, value in _state_dict(timm_model).items():
        if key in back:
            np.testing.assert_array_equal(back[key], value)


@pytest.mark.parametrize(
    ("name", "size", "dtype"),
    [
        ("tresnet_m", 64, np.float32),
        # The paper's resolution, full networks, in float64 (see _compare; slow on a CPU).
        pytest.param("tresnet_m", 448, np.float64, marks=pytest.mark.slow),
        pytest.param("tresnet_l", 448, np.float64, marks=pytest.mark.slow),
    ],
)
def test_full_model_equals_timm(name, size, dtype):
    _compare(_timm_model(name), create_model(name, num_classes=5), size, dtype)


def test_train_mode_batch_norm_equals_timm():
    """A training forward: the same logits (batch statistics) and updated running statistics,
    the variance in Flax's convention (see ``torch_train_step``)."""
    from tests.models.conftest import torch_train_step

    timm_model = _timm_model("tresnet_m", layers=[1, 1, 1, 1])
    variables = tr.torch_to_flax(_state_dict(timm_model))
    x = np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype(np.float32)
    expected, state = torch_train_step(timm_model, x.transpose(0, 3, 1, 2).copy())
    model = tr.TResNet(stage_sizes=(1, 1, 1, 1), num_classes=5, width=64)
    logits, updates = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), compiler_options=_FAST
    )(variables, x)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4 * scale)
    jax.tree.map(
        lambda got, want: np.testing.assert_allclose(
            got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max()
        ),
        jax.device_get(updates["batch_stats"]),
        tr.torch_to_flax(state)["batch_stats"],
    )


@pytest.mark.parametrize(("name", "width"), [("tresnet_m", 64), ("tresnet_l", 76)])
def test_reduced_depth_equals_timm_at_odd_feature_map_sizes(name, width):
    # 72 px: 18, 9, 5, 3 — ceil-mode average pooling and reflect-padded blur on odd sizes. The
    # TResNet-L width (int(64 × 1.2) = 76) at one block per stage.
    timm_model = _timm_model(name, layers=[1, 1, 1, 1])
    _compare(timm_model, tr.TResNet(stage_sizes=(1, 1, 1, 1), num_classes=5, width=width), 72)


def _legacy_name(key):
    """The official TResNet/ASL name of a timm key (conv2d_ABN = Sequential(conv, InPlaceABN))."""
    anti_aliased = any(
        key.startswith(p)
        for p in ("body.layer2.0.conv1.", "body.layer3.0.conv2.", "body.layer4.0.conv2.")
    )
    inner = ".0" if anti_aliased else ""
    key = key.replace(".downsample.1.conv.", ".downsample.1.0.")
    key = key.replace(".downsample.1.bn.", ".downsample.1.1.")
    for conv in ("conv1", "conv2", "conv3"):
        key = key.replace(f"{conv}.conv.", f"{conv}{inner}.0.").replace(
            f"{conv}.bn.", f"{conv}{inner}.1."
        )
    return key


def test_official_asl_names_are_accepted():
    timm_model = _timm_model("tresnet_m", layers=[1, 1, 1, 1])
    state = _state_dict(timm_model)
    legacy = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        # InPlaceABN stores the scale s as w with s = |w| + 1e-5.
        legacy[_legacy_name(key)] = value - 1e-5 if key.endswith("bn.weight") else value
    assert "body.layer2.0.conv1.0.0.weight" in legacy and "body.conv1.1.running_var" in legacy
    got = tr.torch_to_flax({"model": legacy})
    expected = tr.torch_to_flax(state)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6), got, expected)


def test_official_asl_names_load_through_from_torch():
    from asl_jax.models.pretrained import from_torch

    state = _state_dict(_timm_model("tresnet_m"))
    legacy = {
        _legacy_name(k): v - 1e-5 if k.endswith("bn.weight") else v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    num_classes = state["head.fc.weight"].shape[0]
    got = from_torch("tresnet_m", legacy, num_classes=num_classes)
    expected = from_torch("tresnet_m", state, num_classes=num_classes)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6), got, expected)


def test_unknown_key_is_rejected():
    with pytest.raises(ValueError, match=r"TResNet state dict: unexpected key 'body\.fc\.weight'"):
        tr.torch_to_flax(
            {"body.conv1.conv.weight": np.zeros((4, 48, 3, 3)), "body.fc.weight": np.zeros(2)}
        )


@pytest.mark.parametrize(
    ("name", "expected"), [("tresnet_m", 31_389_032), ("tresnet_l", 55_989_256)]
)
def test_parameter_counts_match_timm(name, expected):
    model = create_model(name, num_classes=1000)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    )
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"])) == expected


def test_bfloat16_training_forward_gives_float32_logits_under_jit():
    model = tr.TResNet(stage_sizes=(1, 1, 1, 1), num_classes=3, width=8, dtype=jnp.bfloat16)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)

    @functools.partial(jax.jit, compiler_options=_FAST)
    def run(x):
        variables = model.init(jax.random.key(0), x, train=False)
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return variables, logits, updates

    variables, logits, updates = run(x)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert {x.dtype for x in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}
    before, after = (
        jax.tree.leaves(variables["batch_stats"]),
        jax.tree.leaves(updates["batch_stats"]),
    )
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_image_size_must_be_a_multiple_of_4():
    model = create_model("tresnet_m", num_classes=2)
    with pytest.raises(ValueError, match=r"TResNet input shape \(1, 30, 32, 3\)"):
        model.init(jax.random.key(0), jnp.zeros((1, 30, 32, 3)), train=False)
