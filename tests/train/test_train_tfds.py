"""VOC 2007 and COCO 2017 configs through the real TFDS pipeline into training (mock data)."""

import json
import os

import pytest

tfds = pytest.importorskip(
    "tensorflow_datasets", reason="the TFDS tests need the tfds extra: pip install -e '.[tfds]'"
)

from asl_jax.training.loop import train_and_evaluate  # noqa: E402
from train.configs import coco, voc  # noqa: E402


@pytest.mark.parametrize(("config_module", "num_classes"), [(voc, 20), (coco, 80)])
def test_tfds_config_trains_and_evaluates_on_mock_data(tmp_path, config_module, num_classes):
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
    workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=16):
        result = train_and_evaluate(config, workdir, handle_signals=False)
    assert not result.interrupted
    final = result.summary["final"]
    assert 0.0 <= final["map"] <= 1.0
    with open(os.path.join(workdir, "classes.txt"), encoding="utf-8") as f:
        assert len(f.read().split("\n")) >= num_classes
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train_records = [r for r in records if r.get("kind") == "train"]
    assert [r["step"] for r in train_records] == [1, 2, 3]
    assert all(r["loss"] == r["loss"] for r in train_records)  # finite, not NaN
