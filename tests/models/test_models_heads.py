"""Tests of asl_jax.models.heads: the ML-Decoder head equals timm's ``MLDecoder`` (on a ResNet's
feature map and on ViT tokens), its names convert both ways (timm's and the official code's), its
queries never change in training, and a fine-tuning run with it trains, evaluates, predicts and
exports.

timm's ``MLDecoder`` runs its one layer through ``nn.TransformerDecoder``, whose ``forward`` in
current torch passes arguments the layer does not take (``tgt_is_causal``) and reads a
``self_attn`` the layer does not have; :func:`_timm_ml_decoder_runs` calls the layer directly, as
the decoder (one layer, no final norm) did.
"""

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from asl_jax.compile_options import FAST_COMPILE
from asl_jax.models import (
    MODEL_NAMES,
    MODELS,
    create_model,
    frozen_mask,
    pretrained_model_names,
    torch_layout,
)
from asl_jax.models.heads import (
    MLDecoder,
    ml_decoder_groups,
    ml_decoder_layout,
    ml_decoder_to_flax,
    ml_decoder_to_torch,
    rename_official_ml_decoder,
)
from asl_jax.models.pretrained import convert_torch, from_torch, to_torch
from asl_jax.models.vit import VisionTransformer


def _timm_ml_decoder_runs(decoder):
    """Makes a timm ``MLDecoder`` callable with current torch (see the module docstring)."""
    layers = decoder.decoder.layers
    decoder.decoder.forward = lambda tgt, memory: layers[0](tgt, memory)
    return decoder


def _randomise_batch_norm(model, seed=0):
    torch = pytest.importorskip("torch")

    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)


def _timm_resnet_ml_decoder(num_classes, seed=0, arch="resnet18"):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from timm.layers.ml_decoder import add_ml_decoder_head

    torch.manual_seed(seed)
    model = add_ml_decoder_head(timm.create_model(arch, num_classes=num_classes))
    _timm_ml_decoder_runs(model.fc)
    _randomise_batch_norm(model, seed)
    return model.eval()


def _apply(model, variables, images):
    fn = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=FAST_COMPILE)
    return np.asarray(fn(variables, images))


def _images(size, n=2, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype(np.float32)


def _torch_logits(model, images):
    torch = pytest.importorskip("torch")

    with torch.no_grad():
        return model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def _assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


class GroupsTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("few_classes", 3, 0, 3),
        ("coco", 80, 0, 80),
        ("imagenet", 1000, 0, 100),
        ("set", 1000, 10, 10),
        ("more_than_classes", 5, 50, 5),
    )
    def test_groups(self, classes, groups, expected):
        self.assertEqual(ml_decoder_groups(classes, groups), expected)

    @parameterized.named_parameters(("uneven", 7, 3), ("even", 80, 0), ("one", 1, 0))
    def test_group_fc_covers_every_class(self, classes, groups):
        variables = jax.eval_shape(
            lambda: MLDecoder(classes, groups).init(
                jax.random.key(0), jnp.zeros((1, 2, 2, 8)), train=False
            )
        )
        g = ml_decoder_groups(classes, groups)
        pooling = variables["params"]["duplicate_pooling"].shape
        self.assertEqual(pooling, (g, 768, math.ceil(classes / g)))


@pytest.mark.parametrize(
    ("arch", "classes", "size"),
    [
        ("resnet18", 7, 64),
        ("resnet18", 3, 64),
        # The published setting: ResNet-50, 80 COCO classes at 224 px (a 7 × 7 feature map).
        pytest.param("resnet50", 80, 224, marks=pytest.mark.slow),
    ],
)
def test_resnet_ml_decoder_equals_timm_and_round_trips(arch, classes, size):
    torch = pytest.importorskip("torch")

    reference = _timm_resnet_ml_decoder(classes, arch=arch)
    state_dict = reference.state_dict()
    variables = from_torch(
        arch, state_dict, num_classes=classes, head="ml_decoder", image_size=size
    )
    model = create_model(arch, num_classes=classes, head="ml_decoder", normalization="none")
    images = _images(size)
    _assert_close(_apply(model, variables, images), _torch_logits(reference, images))
    back = to_torch(arch, variables)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    assert set(back) == set(state_dict)


def test_vit_tokens_ml_decoder_equals_timm():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from timm.layers.ml_decoder import MLDecoder as TimmMLDecoder

    torch.manual_seed(0)
    width, depth, classes = 48, 2, 5
    backbone = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=16, embed_dim=width, depth=depth, num_heads=12, num_classes=0
    ).eval()
    decoder = _timm_ml_decoder_runs(
        TimmMLDecoder(num_classes=classes, initial_num_features=width).eval()
    )
    state_dict = {k: v.numpy() for k, v in backbone.state_dict().items()}
    state_dict.update({f"head.{k}": v.numpy() for k, v in decoder.state_dict().items()})
    layout = ml_decoder_layout(MODELS["vit_b16"].torch)
    variables = layout.to_flax(state_dict)
    model = VisionTransformer(
        num_classes=classes, hidden_size=width, depth=depth, img_size=32, classifier="ml_decoder"
    )
    images = _images(32)
    mean, std = 0.5, 0.5
    with torch.no_grad():
        tokens = backbone.forward_features(
            torch.from_numpy(((images - mean) / std).transpose(0, 3, 1, 2).copy())
        )
        expected = decoder(tokens).numpy()
    _assert_close(_apply(model, variables, images), expected)
    back = layout.to_torch(variables)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in state_dict.items()}


def _zero_variables(name, classes, head, size=64):
    model = create_model(name, num_classes=classes, head=head)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


@pytest.mark.parametrize(("name", "prefix"), [("resnet18", "fc"), ("tresnet_m", "head")])
def test_official_ml_decoder_names_load_with_their_head(name, prefix):
    """The official code keeps the projection, queries and group FC inside ``decoder``."""
    variables = _zero_variables(name, 4, "ml_decoder")
    timm_names = to_torch(name, variables)
    official = {}
    for key, value in timm_names.items():
        for part in ("embed_standart", "query_embed", "duplicate_pooling"):
            key = key.replace(f"{prefix}.{part}", f"{prefix}.decoder.{part}")
        official[key] = value
    assert f"{prefix}.decoder.query_embed.weight" in official
    assert rename_official_ml_decoder(official, prefix) == timm_names
    loaded, note = convert_torch(name, official, num_classes=4, head="ml_decoder", image_size=64)
    assert "kept" in note
    jax.tree.map(np.testing.assert_array_equal, loaded["params"], variables["params"])


def test_head_of_other_classes_is_reinitialised_with_fresh_queries():
    variables = _zero_variables("resnet18", 4, "ml_decoder")
    loaded, note = convert_torch(
        "resnet18",
        to_torch("resnet18", variables),
        num_classes=6,
        head="ml_decoder",
        rng=jax.random.key(3),
        image_size=64,
    )
    assert "re-initialised for 6 classes" in note and "fc.query_embed.weight (4, 768)" in note
    assert loaded["params"]["fc"]["query_embed"].shape == (6, 768)
    body = ("layer1", "0", "conv1", "kernel")
    np.testing.assert_array_equal(_get(loaded["params"], body), _get(variables["params"], body))


def _get(tree, path):
    for part in path:
        tree = tree[part]
    return tree


def test_a_linear_checkpoint_starts_an_ml_decoder_head():
    variables = _zero_variables("resnet18", 4, "linear")
    loaded, note = convert_torch(
        "resnet18",
        to_torch("resnet18", variables),
        num_classes=4,
        head="ml_decoder",
        rng=jax.random.key(0),
        image_size=64,
    )
    assert "re-initialised" in note and "fc.weight (4, 512)" in note
    assert "query_embed" in loaded["params"]["fc"]


def test_converters_reject_unknown_head_entries():
    key = "fc.decoder.layers.0.self_attn.weight"
    with pytest.raises(ValueError, match=re.escape(f"unexpected key {key!r}")):
        ml_decoder_to_flax({key: np.zeros((2, 2))}, "fc")


def test_flax_and_torch_names_are_inverse():
    variables = MLDecoder(3).init(jax.random.key(0), jnp.zeros((1, 2, 2, 8)), train=False)
    entries = ml_decoder_to_torch(variables["params"], "head")
    assert "head.decoder.layers.0.multihead_attn.in_proj_weight" in entries
    jax.tree.map(
        np.testing.assert_array_equal,
        ml_decoder_to_flax(entries, "head"),
        jax.device_get(variables["params"]),
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_backbone_takes_the_ml_decoder_head(name):
    model = create_model(name, num_classes=7, head="ml_decoder", ml_decoder_groups=3)
    images = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
    logits = jax.eval_shape(lambda v: model.apply(v, images, train=False), variables)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    head = [v for v in variables["params"].values() if isinstance(v, dict) and "query_embed" in v]
    assert len(head) == 1 and head[0]["query_embed"].shape == (3, 768)
    assert head[0]["duplicate_pooling"].shape == (3, 768, 3)


@pytest.mark.parametrize("name", pretrained_model_names())
def test_every_layout_converts_the_ml_decoder_head_both_ways(name):
    variables = _zero_variables(name, 4, "ml_decoder", size=32)
    layout = torch_layout(name, "ml_decoder")
    state_dict = layout.to_torch(variables)
    assert f"{layout.head}.query_embed.weight" in state_dict
    assert f"{layout.head}.decoder.layers.0.multihead_attn.in_proj_weight" in state_dict
    back = {k: v for k, v in layout.to_flax(state_dict).items() if v or k == "params"}
    assert jax.tree.map(np.shape, back) == jax.tree.map(np.shape, dict(variables))


def test_layout_names_the_head_per_backbone():
    assert torch_layout("resnet18", "ml_decoder").head == "fc"
    assert torch_layout("tresnet_m", "linear").head == "head.fc"
    assert torch_layout("tresnet_m", "ml_decoder").head == "head"
    assert torch_layout("vit_b16", "ml_decoder").flax_head == "head"
    assert torch_layout("cnn", "ml_decoder") is None
    with pytest.raises(ValueError, match=r"model\.head='mlp'"):
        torch_layout("resnet18", "mlp")


def test_queries_are_the_only_frozen_parameters():
    mask = frozen_mask(_zero_variables("resnet18", 3, "ml_decoder")["params"])
    frozen = [
        "/".join(str(p.key) for p in path)
        for path, value in jax.tree_util.tree_flatten_with_path(mask)[0]
        if value
    ]
    assert frozen == ["fc/query_embed"]


def test_dropout_only_in_training():
    head = MLDecoder(3, dropout=0.5)
    x = jnp.asarray(_images(4, n=2))
    variables = head.init(jax.random.key(0), x, train=False)
    eval_a = head.apply(variables, x, train=False)
    eval_b = head.apply(variables, x, train=False)
    train = head.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(eval_a, eval_b)
    assert not np.allclose(train, eval_a)


def _ml_decoder_weights(path, classes):
    """A timm resnet18 with an ML-Decoder head of ``classes`` classes, saved as .pth."""
    torch = pytest.importorskip("torch")

    torch.save(_timm_resnet_ml_decoder(classes).state_dict(), path)
    return path


def test_fine_tuning_with_ml_decoder_trains_evaluates_predicts_and_exports(tmp_path):
    """The fine-tuning recipe with ``model.head=ml_decoder`` (frozen backbone for a step, EMA):
    the queries leave every model exactly as they came, the other head weights move, and the
    run evaluates, predicts and exports into timm's model with its ML-Decoder head."""
    torch = pytest.importorskip("torch")
    from tests.train.conftest import run_module
    from tests.train.test_train_finetune import CLASSES, _flags, _write_folder

    data = _write_folder(tmp_path / "photos")
    weights = _ml_decoder_weights(tmp_path / "r18_mld.pth", len(CLASSES))
    workdir = tmp_path / "run"
    flags = [
        *_flags(data, weights),
        "--config.model.head=ml_decoder",
        "--config.model.freeze_backbone_steps=1",
        "--config.ema_decay=0.5",
    ]
    proc = run_module("train", *flags, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "head 'fc' kept (3 classes)" in proc.stdout + proc.stderr
    assert json.loads((workdir / "config.json").read_text())["model"]["head"] == "ml_decoder"

    proc = run_module("train.evaluate", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    image = str(data / "img" / "0.jpg")
    proc = run_module("train.predict", f"--workdir={workdir}", "--json", "--threshold=0", image)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(json.loads(proc.stdout)["predictions"][0]["labels"]) == len(CLASSES)

    # Exported in this process from one reopened run (each reopening costs CI time).
    from train.export import export_run
    from train.reopen import open_run

    run = open_run(workdir)
    original = torch.load(weights, weights_only=True)
    for ema in (False, True):
        output = workdir / f"ema_{ema}.pth"
        export_run(run, output, ema=ema)
        exported = torch.load(output, weights_only=True)
        torch.testing.assert_close(
            exported["fc.query_embed.weight"], original["fc.query_embed.weight"], rtol=0, atol=0
        )
        assert not torch.equal(exported["fc.duplicate_pooling"], original["fc.duplicate_pooling"])
        target = _timm_resnet_ml_decoder(len(CLASSES))
        target.load_state_dict(exported, strict=True)
