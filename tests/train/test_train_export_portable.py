"""``python -m train.export --format=onnx`` / ``--format=stablehlo`` and ``train.predict --model``.

The default run exports the BCE run of the shared tiny comparison (the small CNN: max pooling,
which ONNX Runtime runs only as rewritten by :mod:`train.portable`) and checks, against the JAX
model, the probabilities in ONNX Runtime, the labels ``train.predict`` reports from the ONNX
file, the metadata, and a StableHLO file reloaded in a fresh process at another batch size. The
``slow`` run converts every model of the registry with both heads.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from asl_jax.data.folder import load_image
from tests.train.conftest import REPO, env
from train import portable
from train.export import export_workdir
from train.predict import predict_files, select_labels
from train.reopen import RunError, open_run

TOLERANCE = 1e-4  # absolute, on probabilities


def _jax_probabilities(run, images):
    function = portable.inference_function(
        run.programs.model, {"params": run.state.params, "batch_stats": run.state.batch_stats}
    )
    return np.asarray(function(jnp.asarray(images)))


def test_onnx_export_predicts_the_labels_and_probabilities_of_jax(comparison, images, tmp_path):
    pytest.importorskip("jax2onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    output = tmp_path / "tiny.onnx"
    proc = comparison.cli(
        "train.export", f"--workdir={comparison.run}", "--format=onnx", f"--output={output}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"{output}: cnn as onnx (regular model, step 8, 30 classes)")

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    classes = open(os.path.join(comparison.run, "classes.txt")).read().split()
    assert json.loads(metadata["classes"]) == classes
    assert json.loads(metadata["thresholds"]) == [0.5] * len(classes)
    assert (metadata["step"], metadata["image_size"], metadata["name"]) == ("8", "16", "cnn")
    # The batch dimension is free: 5 random images, not a batch size the run ever used.
    batch = np.random.default_rng(0).random((5, 16, 16, 3), np.float32)
    got = portable.onnx_probabilities(session, batch)
    run = open_run(comparison.run)
    expected = _jax_probabilities(run, batch)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)

    # The same command, with the ONNX file as the model: the labels of the JAX model.
    proc = comparison.cli(
        "train.predict", f"--model={output}", "--json", "--threshold=0", "--top_k=3", str(images)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["step"] == 8 and result["model"] == "regular" and result["top_k"] == 3
    paths = sorted(str(p) for p in images.glob("*.png"))
    assert [p["image"] for p in result["predictions"]] == paths
    loaded = np.stack([load_image(path, 16) for path in paths]).astype(np.float32) / 255
    for pred, probs in zip(result["predictions"], _jax_probabilities(run, loaded), strict=True):
        expected = select_labels(probs, classes, threshold=0.0, top_k=3)
        assert [x["label"] for x in pred["labels"]] == [x["label"] for x in expected]
        np.testing.assert_allclose(
            list(pred["probabilities"].values()), probs, rtol=0, atol=TOLERANCE
        )


def test_stablehlo_export_runs_in_a_fresh_process_at_any_batch_size(comparison, tmp_path):
    output = tmp_path / "tiny.stablehlo"
    info = export_workdir(comparison.run, output, export_format="stablehlo", ema=True)
    assert info["model"] == "ema" and info["step"] == 8
    metadata = json.loads((tmp_path / "tiny.stablehlo.json").read_text())
    assert metadata["model"] == "ema" and len(json.loads(metadata["classes"])) == 30
    batch = np.random.default_rng(1).random((3, 16, 16, 3), np.float32)
    np.save(tmp_path / "batch.npy", batch)
    script = (
        "import sys, jax, numpy as np\n"
        "exported = jax.export.deserialize(open(sys.argv[1], 'rb').read())\n"
        "np.save(sys.argv[3], np.asarray(exported.call(np.load(sys.argv[2]))))\n"
    )
    args = [str(output), str(tmp_path / "batch.npy"), str(tmp_path / "probs.npy")]
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = open_run(comparison.run)
    function = portable.inference_function(
        run.programs.model,
        {"params": run.state.ema_params, "batch_stats": run.state.ema_batch_stats},
    )
    expected = np.asarray(function(jnp.asarray(batch)))
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), expected, rtol=0, atol=1e-6)


def test_onnx_without_the_export_extra_says_which_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # import jax2onnx raises ImportError
    with pytest.raises(ImportError, match=r'^ONNX needs jax2onnx.*pip install -e "\.\[export\]"$'):
        export_workdir(tmp_path / "no_run", tmp_path / "m.onnx", export_format="onnx")


@pytest.mark.parametrize(
    ("export_format", "output", "expected"),
    [
        ("onnx", "m.pth", r"--output=m\.pth: expected a \.onnx file, not '\.pth' \(for that "),
        ("torch", "m.onnx", r"expected a \.safetensors.*not '\.onnx' \(.*--format=onnx\)"),
        ("stablehlo", "m", r"expected a \.stablehlo file, not 'none'"),
    ],
)
def test_an_output_of_another_format_is_refused_before_the_run_is_opened(
    tmp_path, export_format, output, expected
):
    with pytest.raises(RunError, match=expected):
        export_workdir(tmp_path / "no_run", output, export_format=export_format)


def test_predict_with_an_onnx_model_refuses_a_checkpoint_choice(tmp_path):
    with pytest.raises(ValueError, match="either --workdir or --model"):
        predict_files(tmp_path, ["x.png"], model=tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="--ema and --step choose a checkpoint of a workdir"):
        predict_files(None, ["x.png"], model=tmp_path / "m.onnx", ema=True)


@pytest.mark.parametrize(
    ("function", "shape"),
    [
        # Max pooling as the models do it (3×3, stride 2, padded), and a dilated window.
        (
            lambda x: lax.reduce_window(
                x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
            ),
            (2, 9, 8, 3),
        ),
        (
            lambda x: lax.reduce_window(
                x,
                -jnp.inf,
                lax.max,
                (1, 2, 2, 1),
                (1, 1, 1, 1),
                "VALID",
                window_dilation=(1, 2, 1, 1),
            ),
            (2, 7, 6, 3),
        ),
        # Padding with a value, asymmetric and negative (a crop), inside a jit.
        (
            jax.jit(lambda x: lax.pad(x, 2.5, ((0, 0, 0), (1, 2, 0), (-1, 3, 0), (0, 0, 0)))),
            (2, 5, 6, 3),
        ),
        (lambda x: jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect"), (2, 5, 6, 3)),
    ],
    ids=["max_pool", "dilated_max_pool", "pad", "reflect_pad"],
)
def test_portable_rewrite_computes_the_same_values(function, shape):
    """The primitives ONNX cannot take are replaced (also at a symbolic batch size), by
    equivalent ones."""
    (batch,) = jax.export.symbolic_shape(portable.BATCH)
    symbolic = jax.ShapeDtypeStruct((batch, *shape[1:]), jnp.float32)
    rewritten = portable.portable(function, symbolic)
    names = {e.primitive.name for e in jax.make_jaxpr(rewritten)(symbolic).eqns}
    assert not names & {"reduce_window_max", "pad", "pjit", "jit"}, names
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    concrete = portable.portable(function, jax.ShapeDtypeStruct(shape, jnp.float32))
    np.testing.assert_array_equal(np.asarray(concrete(x)), np.asarray(function(x)))


def _registry_cases():
    from asl_jax.models import HEAD_NAMES, MODEL_NAMES

    return [(name, head) for name in MODEL_NAMES for head in HEAD_NAMES]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "head"), _registry_cases())
def test_every_model_of_the_registry_converts_to_onnx(name, head, tmp_path):
    pytest.importorskip("jax2onnx")
    pytest.importorskip("onnxruntime")
    from asl_jax.models import create_model

    size = 32
    # ViT's token width must be a multiple of its 12 heads; the others: 8 channels first.
    width = 24 if name == "vit_b16" else 8
    model = create_model(name, num_classes=7, width=width, head=head)
    variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    # Random batch-norm statistics (means around 0, variances around 1): the initial ones
    # (0 and 1) would hide a wrong normalisation.
    if "batch_stats" in variables:
        stats = jax.tree.map(
            lambda v: v + 0.2 * jax.random.uniform(jax.random.key(1), v.shape),
            variables["batch_stats"],
        )
        variables = {**variables, "batch_stats": stats}
    function = portable.inference_function(model, variables)
    path = tmp_path / "m.onnx"
    path.write_bytes(portable.to_onnx(function, size, {"name": name}))
    session = portable.onnx_session(path)
    batch = np.random.default_rng(3).random((3, size, size, 3), np.float32)
    np.testing.assert_allclose(
        portable.onnx_probabilities(session, batch),
        np.asarray(function(jnp.asarray(batch))),
        rtol=0,
        atol=TOLERANCE,
    )


def test_metadata_stores_the_tuned_thresholds_in_class_order(tmp_path):
    import types

    from train.export import portable_metadata

    (tmp_path / "thresholds.json").write_text(json.dumps({"thresholds": {"b": 0.7, "a": 0.3}}))
    run = types.SimpleNamespace(
        workdir=str(tmp_path),
        class_names=("a", "b"),
        step=4,
        config=types.SimpleNamespace(
            threshold=0.5,
            model=types.SimpleNamespace(name="cnn", normalization="centered"),
            data=types.SimpleNamespace(image_size=16),
        ),
    )
    tuned = portable_metadata(run, ema=True, thresholds="tuned")
    assert json.loads(tuned["thresholds"]) == [0.3, 0.7] and tuned["thresholds_source"] == "tuned"
    assert json.loads(tuned["classes"]) == ["a", "b"] and tuned["model"] == "ema"
    plain = portable_metadata(run, ema=False, thresholds="global")
    assert json.loads(plain["thresholds"]) == [0.5, 0.5] and plain["thresholds_source"] == "global"
