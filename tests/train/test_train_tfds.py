"""VOC 2007 and COCO 2017 configs through the real TFDS pipelines into training: TFDS mock data
(tf.data) and tiny datasets prepared locally as ArrayRecord (random access through Grain)."""

import json
import os
from typing import ClassVar

import jax
import numpy as np
import pytest

tfds = pytest.importorskip(
    "tensorflow_datasets", reason="the TFDS tests need the tfds extra: pip install -e '.[tfds]'"
)

from asl_jax.training.loop import train_and_evaluate  # noqa: E402
from asl_jax.training.state import checkpoint_items  # noqa: E402
from train.configs import coco, voc  # noqa: E402


def _small(config_module, **overrides):
    config = config_module.get_config()
    # The shipped config, shrunk to CPU-test size: same data source, loss and reduction.
    config.model.name = "cnn"  # from scratch: nothing can be downloaded here
    config.model.pretrained = ""
    config.model.normalization = "auto"
    config.model.width = 4
    config.data.image_size = 16
    config.batch_size = 8
    config.num_steps = 3
    config.eval_every = 0
    config.checkpoint_every = 0
    config.log_every = 1
    config.progress_bar = False
    for key, value in overrides.items():
        config[key] = value
    return config


def _train_records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r.get("kind") == "train"]


@pytest.mark.parametrize(("config_module", "num_classes"), [(voc, 20), (coco, 80)])
def test_tfds_config_trains_and_evaluates_on_mock_data(tmp_path, config_module, num_classes):
    config = _small(config_module)
    workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=16):
        result = train_and_evaluate(config, workdir, handle_signals=False)
    assert not result.interrupted
    final = result.summary["final"]
    assert 0.0 <= final["map"] <= 1.0
    with open(os.path.join(workdir, "classes.txt"), encoding="utf-8") as f:
        assert len(f.read().split("\n")) >= num_classes
    train_records = _train_records(workdir)
    assert [r["step"] for r in train_records] == [1, 2, 3]
    assert all(r["loss"] == r["loss"] for r in train_records)  # finite, not NaN


class _Tiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """16 + 8 random 24×32 JPEGs with 1-3 labels of the first four classes."""

    VERSION = tfds.core.Version("1.0.0")
    SPLITS: ClassVar[dict[str, tuple[int, int]]] = {}

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(*span) for split, span in self.SPLITS.items()}

    def _generate_examples(self, lo, hi):
        rng = np.random.default_rng(lo)
        for i in range(lo, hi):
            image = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
            yield i, self._example(image, sorted({i % 4, (i * 7) % 4, (i // 3) % 4}))


class _TinyVoc(_Tiny, skip_registration=True):
    name = "voc"
    BUILDER_CONFIGS = (tfds.core.BuilderConfig(name="2007"),)
    SPLITS: ClassVar = {"train": (0, 10), "validation": (10, 16), "test": (16, 24)}

    def _info(self):
        labels = tfds.features.Sequence(tfds.features.ClassLabel(num_classes=20))
        features = {"image": tfds.features.Image(encoding_format="jpeg"), "labels": labels}
        features["labels_no_difficult"] = labels
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _example(self, image, labels):
        return {"image": image, "labels": labels, "labels_no_difficult": labels}


class _TinyCoco(_Tiny, skip_registration=True):
    name = "coco"
    BUILDER_CONFIGS = (tfds.core.BuilderConfig(name="2017"),)
    SPLITS: ClassVar = {"train": (0, 16), "validation": (16, 24)}

    def _info(self):
        objects = tfds.features.Sequence({"label": tfds.features.ClassLabel(num_classes=80)})
        features = {"image": tfds.features.Image(encoding_format="jpeg"), "objects": objects}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _example(self, image, labels):
        return {"image": image, "objects": {"label": labels}}


@pytest.fixture(scope="module")
def array_record_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("array_record")
    for builder_class in (_TinyVoc, _TinyCoco):
        builder_class(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return str(data_dir)


@pytest.mark.parametrize("config_module", [voc, coco])
def test_tfds_config_trains_on_array_record_data(tmp_path, array_record_dir, config_module):
    config = _small(config_module)
    config.data.data_dir = array_record_dir
    config.checkpoint_every = 2  # the data pipeline's state is saved with the checkpoints
    workdir = str(tmp_path / "run")
    result = train_and_evaluate(config, workdir, handle_signals=False)
    assert not result.interrupted
    assert 0.0 <= result.summary["final"]["map"] <= 1.0
    train_records = _train_records(workdir)
    assert [r["step"] for r in train_records] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in train_records)


def test_array_record_training_resumes_like_an_uninterrupted_run(tmp_path, array_record_dir):
    """Stopped after step 3 (in the middle of the second epoch of 2 steps) and rerun: it resumes
    from the checkpointed pipeline state and ends with the state of an uninterrupted run."""
    config = _small(voc, num_steps=5)
    config.data.data_dir = array_record_dir
    whole = train_and_evaluate(config, str(tmp_path / "whole"), handle_signals=False)
    workdir = str(tmp_path / "resumed")
    first = train_and_evaluate(config, workdir, stop_at_step=3, handle_signals=False)
    assert first.interrupted == 0 and int(first.state.step) == 3
    second = train_and_evaluate(config, workdir, handle_signals=False)
    assert int(second.state.step) == 5
    final = jax.device_get(checkpoint_items(second.state))
    expected = jax.device_get(checkpoint_items(whole.state))
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)
    losses = [r["loss"] for r in _train_records(workdir)]
    assert losses == [r["loss"] for r in _train_records(str(tmp_path / "whole"))]
