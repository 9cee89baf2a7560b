"""``python -m train --config=train/configs/folder_finetune.py`` from a torchvision weights file.

A small generated folder dataset and a ``.pth`` file saved from a torchvision model with random
weights (nothing is downloaded): the fine-tuning recipe trains, ``train.evaluate`` and
``train.predict`` read the run, ``train.export`` writes it back for torchvision, and a file of the
wrong architecture or a corrupt file stops the run before training with one line that names the
problem. Skipped without torchvision.
"""

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from tests.train.conftest import run_module

CONFIG = "--config=train/configs/folder_finetune.py"
CLASSES = ("sky", "grass", "sand")
COLOURS = {"sky": (60, 110, 230), "grass": (40, 170, 60), "sand": (220, 200, 120)}


def _write_folder(root, num_train=16, num_val=8):
    """``num_train`` + ``num_val`` 24×24 JPEGs: one or two colour bands, labelled by colour."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = {"train": [], "val": []}
    for i in range(num_train + num_val):
        labels = sorted(rng.choice(CLASSES, size=1 + i % 2, replace=False))
        pixels = np.zeros((24, 24, 3), np.uint8)
        for band, label in enumerate(labels):
            pixels[:, band * 12 :] = COLOURS[label]
        pixels = np.clip(pixels + rng.integers(0, 20, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{i}.jpg", quality=90)
        rows["train" if i < num_train else "val"].append(f"img/{i}.jpg,{' '.join(labels)}")
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("image,labels\n" + "\n".join(lines) + "\n")
    return root


def _torchvision_weights(path, arch):
    """A torchvision ``arch`` with random weights (1000 classes, as ImageNet's), saved as .pth."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), path)
    return path


def _flags(data, weights, model="resnet18"):
    # A tiny run of the recipe: 2 steps of batch 8 at 32 px, one evaluation and checkpoint at the
    # end; everything else (optimizer, schedule, EMA, normalisation) is folder_finetune's.
    return [
        CONFIG,
        f"--config.data.path={data}",
        f"--config.model.name={model}",
        f"--config.model.pretrained={weights}",
        "--config.data.image_size=32",
        "--config.batch_size=8",
        "--config.eval_batch_size=8",
        "--config.num_epochs=0",
        "--config.num_steps=2",
        "--config.eval_every=2",
        "--config.checkpoint_every=2",
        "--config.log_every=1",
        "--config.progress_bar=False",
        "--config.tensorboard=False",
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("photos"))


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_fine_tunes_from_a_pth_file_then_evaluates_and_predicts(tmp_path, data, arch):
    weights = _torchvision_weights(tmp_path / f"{arch}.pth", arch)
    workdir = tmp_path / "run"
    proc = run_module("train", *_flags(data, weights, arch), f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert f"{arch} initialised from {weights}" in output
    assert "re-initialised" in output  # 1000 ImageNet classes -> a new 3-class head
    recorded = json.loads((workdir / "config.json").read_text())
    assert recorded["model"]["pretrained"] == str(weights)
    assert recorded["model"]["normalization"] == "imagenet"
    assert recorded["optimizer"] == "adam" and recorded["learning_rate"] == 1e-4
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 2
    assert np.isfinite(summary["final"]["map"])

    proc = run_module("train.evaluate", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((workdir / "eval.json").read_text())
    assert result["step"] == 2 and result["num_images"] == 8
    assert result["map"] == pytest.approx(summary["final"]["map"], abs=1e-6)

    images = [str(data / "img" / "0.jpg"), str(data / "img" / "20.jpg")]
    proc = run_module("train.predict", f"--workdir={workdir}", "--json", "--threshold=0", *images)
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = json.loads(proc.stdout)["predictions"]
    assert [p["image"] for p in predictions] == images
    for prediction in predictions:
        assert {label["label"] for label in prediction["labels"]} == set(CLASSES)
        assert all(0 <= p <= 1 for p in prediction["probabilities"].values())

    _exports_into_torchvision_with_the_same_logits(workdir, arch)


def _exports_into_torchvision_with_the_same_logits(workdir, arch):
    """``train.export`` writes .pth and .safetensors (in this process, from one reopened run: the
    CLI is a thin wrapper, and each reopening costs CI time); both load strictly into
    torchvision and give the logits of the checkpoint's model."""
    import jax
    import torch
    import torchvision
    from safetensors import safe_open

    from asl_jax.compile_options import FAST_COMPILE
    from asl_jax.models import create_model
    from asl_jax.models.normalization import NORMALIZATIONS
    from train.export import export_run, format_export
    from train.reopen import open_run

    run = open_run(workdir)  # once: reopening a run costs about 20 s here
    info = export_run(run, workdir / "m.pth")
    assert f"load with torchvision.models.{arch}(num_classes=3)" in format_export(info)
    info = export_run(run, workdir / "m.safetensors")
    assert info["step"] == 2 and info["normalization"] == "imagenet"
    with safe_open(str(workdir / "m.safetensors"), "np") as f:
        assert json.loads(f.metadata()["classes"]) == sorted(CLASSES)
        from_safetensors = {k: torch.from_numpy(f.get_tensor(k)) for k in f.keys()}

    variables = jax.device_get({"params": run.state.params, "batch_stats": run.state.batch_stats})
    model = create_model(arch, num_classes=3, normalization="imagenet")
    images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=FAST_COMPILE)
    expected = np.asarray(apply(variables, images))
    mean, std = NORMALIZATIONS["imagenet"]
    x = torch.from_numpy(((images - mean) / std).transpose(0, 3, 1, 2).copy())
    for state_dict in (torch.load(workdir / "m.pth", weights_only=True), from_safetensors):
        target = torchvision.models.get_model(arch, weights=None, num_classes=3).eval()
        target.load_state_dict(state_dict, strict=True)
        with torch.no_grad():
            logits = target(x).numpy()
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _truncated(path, arch):
    _torchvision_weights(path, arch)
    path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    return path


def _corrupt_safetensors(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")  # a header length, no header
    return path


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(
            lambda tmp: _torchvision_weights(tmp / "r18.pth", "resnet18"),
            "the state dict does not fit model 'resnet50'",
            id="wrong-architecture",
        ),
        pytest.param(
            lambda tmp: _truncated(tmp / "r18.pth", "resnet18"),
            "is not a readable PyTorch file",
            id="truncated-pth",
        ),
        pytest.param(
            _corrupt_safetensors, "is not a readable safetensors file", id="corrupt-safetensors"
        ),
    ],
)
def test_a_bad_weights_file_fails_before_training_with_one_line(tmp_path, data, make, expected):
    weights = make(tmp_path)
    workdir = tmp_path / "run"
    proc = run_module("train", *_flags(data, weights, "resnet50"), f"--workdir={workdir}")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert expected in errors[0] and f"model.pretrained='{weights}'" in errors[0]
    assert "Traceback" not in proc.stderr
    # Nothing was trained or recorded: no checkpoint, no config.json, no metrics.
    assert [path for path in workdir.rglob("*") if path.is_file()] == []


def test_export_refuses_an_unknown_format_before_opening_the_run(tmp_path):
    from train.export import export_workdir
    from train.reopen import RunError

    with pytest.raises(RunError, match=r"--output=m\.onnx: expected a \.safetensors, \.pth or"):
        export_workdir(tmp_path / "no_run", "m.onnx")


@pytest.mark.parametrize("extension", [".safetensors", ".pth"])
def test_export_writes_the_normalised_path_with_the_default_mode(tmp_path, monkeypatch, extension):
    """``--output=out/sub/../m.safetensors`` with ``sub`` missing is ``out/m.safetensors``, and
    the file gets 0666 less the umask (safetensors alone creates 0600 files)."""
    import types

    import asl_jax.models.pretrained as pretrained
    from train.export import export_run

    if extension == ".pth":
        pytest.importorskip("torch")
    weights = {"fc.weight": np.ones((3, 4), np.float32), "fc.bias": np.zeros(3, np.float32)}
    monkeypatch.setattr(pretrained, "to_torch", lambda name, variables: weights)
    run = types.SimpleNamespace(
        config=types.SimpleNamespace(
            model=types.SimpleNamespace(name="resnet18", normalization="imagenet")
        ),
        state=types.SimpleNamespace(params={}, batch_stats={}),
        workdir=str(tmp_path / "run"),
        step=7,
        class_names=("a", "b", "c"),
    )
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o027)
    try:
        info = export_run(run, os.path.join("out", "sub", "..", f"m{extension}"))
    finally:
        os.umask(old)
    written = tmp_path / "out" / f"m{extension}"
    assert info["output"] == str(written)
    assert sorted(os.listdir(tmp_path / "out")) == [f"m{extension}"]  # no sub/, no temporary
    assert stat.S_IMODE(written.stat().st_mode) == 0o640
    assert set(pretrained.load_state_dict(written)) == set(weights)
