"""Tests of asl_jax.models.vit: equality with timm's ViT-B/16, position-embedding resizing,
converters, shapes, dtypes. The timm comparisons (random weights) are skipped without timm.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asl_jax.models import create_model, vit
from asl_jax.models.normalization import NORMALIZATIONS

_FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _timm_model(**kwargs):
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=5, **kwargs)
    with torch.no_grad():  # timm initialises biases and the head to zero, norms to one
        for name, p in model.named_parameters():
            if p.ndim == 1 or name.startswith("head"):
                p.add_(
                    torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.2
                )
    return model.eval()


@pytest.mark.parametrize(
    ("depth", "size"),
    # Full depth at 32 px (2×2 grid: position embeddings shrunk from 14×14), 2 blocks at 48 px
    # (3×3) and at 224 px (the stored grid, no resizing); full depth at 384 px (24×24: the
    # embeddings grown, the usual fine-tuning resolution; slow).
    [(12, 32), (2, 48), (2, 224), pytest.param(12, 384, marks=pytest.mark.slow)],
)
def test_equals_timm_and_round_trips(depth, size):
    torch = pytest.importorskip("torch")
    timm_model = _timm_model(depth=depth, dynamic_img_size=True)
    x = np.random.default_rng(0).uniform(size=(2, size, size, 3)).astype(np.float32)
    with torch.no_grad():  # timm's default data config: mean = std = 0.5
        expected = timm_model(torch.from_numpy((x - 0.5) / 0.5).permute(0, 3, 1, 2)).numpy()
    state = {k: v.numpy() for k, v in timm_model.state_dict().items()}
    variables = vit.torch_to_flax(state)
    assert variables["batch_stats"] == {}
    model = vit.VisionTransformer(num_classes=5, depth=depth)
    got = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=_FAST)(variables, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    back = vit.flax_to_torch(variables)
    assert set(back) == set(state)
    timm_model.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    for key, value in back.items():
        np.testing.assert_array_equal(value, state[key])


@pytest.mark.parametrize("grid", [(1, 1), (2, 2), (3, 3), (7, 7), (14, 14), (24, 24), (2, 5)])
def test_pos_embed_resize_equals_timm(grid):
    pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    from timm.layers import resample_abs_pos_embed

    pos = np.random.default_rng(0).normal(size=(1, 197, 16)).astype(np.float32)
    expected = resample_abs_pos_embed(torch.from_numpy(pos), list(grid), num_prefix_tokens=1)
    got = vit.resize_pos_embed(pos, grid)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(vit.resize_pos_embed(jnp.asarray(pos), grid), got, atol=1e-5)


def test_resized_at_load_time_equals_resized_in_the_model():
    model = vit.VisionTransformer(num_classes=3, hidden_size=24, depth=1, num_heads=2, patch_size=8)
    x = np.random.default_rng(0).uniform(size=(1, 24, 24, 3)).astype(np.float32)
    jit = functools.partial(jax.jit, compiler_options=_FAST)
    variables = jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
    assert variables["params"]["pos_embed"].shape == (1, 1 + 28 * 28, 24)  # the 224 px grid
    in_model = jit(functools.partial(model.apply, train=False))(variables, x)
    params = dict(variables["params"])
    params["pos_embed"] = vit.resize_pos_embed(np.asarray(params["pos_embed"]), (3, 3))
    small = model.clone(img_size=24)
    at_load = jit(functools.partial(small.apply, train=False))({"params": params}, x)
    np.testing.assert_allclose(at_load, in_model, atol=1e-5)


def test_parameter_count_matches_timm():
    model = create_model("vit_b16", num_classes=1000)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
    )
    assert "batch_stats" not in variables
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"])) == 86_567_656


def test_each_normalization_is_applied_to_the_input():
    plain = vit.VisionTransformer(
        num_classes=2, hidden_size=8, depth=1, num_heads=2, patch_size=8, normalization="none"
    )
    x = np.full((1, 16, 16, 3), 0.3, np.float32)

    @functools.partial(jax.jit, compiler_options=_FAST)
    def run(x):  # every normalisation in one compiled program
        variables = plain.init(jax.random.key(0), x, train=False)
        return {
            name: (
                plain.clone(normalization=name).apply(variables, x, train=False),
                plain.apply(variables, (x - mean) / std, train=False),
            )
            for name, (mean, std) in NORMALIZATIONS.items()
        }

    for name, (got, expected) in run(x).items():
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)


def test_bfloat16_gives_float32_logits_under_jit():
    model = create_model("vit_b16", num_classes=3, dtype="bfloat16", width=24)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)

    @functools.partial(jax.jit, compiler_options=_FAST)
    def run(x):
        variables = model.init(jax.random.key(0), x, train=False)
        return variables, model.apply(variables, x, train=True, mutable=["batch_stats"])

    variables, (logits, updates) = run(x)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits))) and updates == {}
    assert {x.dtype for x in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}


@pytest.mark.parametrize(
    ("kwargs", "shape", "message"),
    [
        ({}, (1, 40, 32, 3), r"ViT input shape \(1, 40, 32, 3\): expected .* multiples of 16"),
        ({"normalization": "clip"}, (1, 32, 32, 3), "normalization='clip': expected one of"),
        (
            {"hidden_size": 20},
            (1, 32, 32, 3),
            "hidden_size=20: expected a multiple of num_heads=12",
        ),
    ],
)
def test_bad_configuration_is_rejected(kwargs, shape, message):
    model = vit.VisionTransformer(num_classes=2, depth=1, **{"hidden_size": 24, **kwargs})
    with pytest.raises(ValueError, match=message):
        model.init(jax.random.key(0), jnp.zeros(shape), train=False)


def test_unknown_key_is_rejected():
    with pytest.raises(ValueError, match=r"ViT state dict: unexpected key 'fc_norm\.weight'"):
        vit.torch_to_flax({"fc_norm.weight": np.zeros(3)})
