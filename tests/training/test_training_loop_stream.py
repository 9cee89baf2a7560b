"""Exact resume of a run whose folder data stream through the Grain pipeline.

A run on a folder dataset decoded per batch (``memory_limit_bytes=0``), killed after step 6 with
its last checkpoint at step 5, is resumed from that checkpoint and the pipeline state saved with
it: the final state and the records are bitwise those of an uninterrupted run on the same folder
held in memory, with the images decoded in the training process (``num_workers=0``) or in worker
processes. The tiny config of ``test_training_loop`` is reused (64 images of 20×24 px at 16 px,
10 steps of 16 over 4-step epochs: the resumed epoch starts mid-way).
"""

import json
import shutil

import jax
import numpy as np
import pytest
from PIL import Image
from test_training_loop import _strip, tiny_config

from asl_jax.data import pipeline
from asl_jax.data.folder import FolderSource
from asl_jax.training.checkpoint import Checkpointer
from asl_jax.training.loop import train_and_evaluate
from asl_jax.training.state import checkpoint_items

CLASSES = ("a", "b", "c")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(64):
        pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{i}.jpg")
        labels = [c for c, on in zip(CLASSES, (i % 2, i % 3 == 0, i % 5 == 0), strict=True) if on]
        rows.append(f"img/{i}.jpg,{' '.join(labels)}")
    (root / "train.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")
    (root / "val.csv").write_text("image,labels\n" + "\n".join(rows[:24]) + "\n")
    return root


def _config(folder, tmp_path):
    config = tiny_config(tmp_path / "unused_cache")
    config.data.name, config.data.path = "folder", str(folder)
    return config


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory):
    """The uninterrupted run, its images decoded once and held in memory."""
    workdir = tmp_path_factory.mktemp("reference")
    source = FolderSource(str(folder), image_size=16)
    assert source.in_memory
    return train_and_evaluate(
        _config(folder, workdir), workdir, source=source, handle_signals=False
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_through_the_pipeline_state_equals_the_uninterrupted_run(
    reference, folder, tmp_path, num_workers, monkeypatch
):
    restored = []
    set_state = pipeline.EpochBatches.set_state

    def spy(self, state):
        restored.append(state)
        return set_state(self, state)

    monkeypatch.setattr(pipeline.EpochBatches, "set_state", spy)
    config = _config(folder, tmp_path)

    def streaming():
        source = FolderSource(
            str(folder), image_size=16, memory_limit_bytes=0, num_workers=num_workers
        )
        assert not source.in_memory
        return source

    first = train_and_evaluate(
        config, tmp_path, source=streaming(), stop_at_step=6, handle_signals=False
    )
    assert first.interrupted == 0
    # A kill after the checkpoint of step 5 (the best evaluation) and before the next one.
    shutil.rmtree(tmp_path / "checkpoints" / "6")
    ckpt = Checkpointer(tmp_path / "checkpoints")
    saved = ckpt.data_state(5)
    ckpt.close()
    # Step 5 is batch 1 of epoch 1: the state is after 5 batches of the run's stream.
    assert saved["next"] == 5 and saved["num_workers"] == num_workers and saved["grain"]
    assert restored == []
    second = train_and_evaluate(config, tmp_path, source=streaming(), handle_signals=False)
    assert second.interrupted is None and int(second.state.step) == 10
    assert restored == [json.loads(json.dumps(saved))]  # the resumed epoch continued from it
    final = jax.device_get(checkpoint_items(second.state))
    expected = jax.device_get(checkpoint_items(reference.state))
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert _strip(records) == _strip(reference.records)
