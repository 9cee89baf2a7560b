"""The Grain pipeline of the streaming folder source: order, resume from its state, bad files.

Worker processes are spawned (seconds each on a loaded machine with few cores), so the tests that
use them are few and their datasets tiny (24 images of 20×24 px, decoded at 8 px).
"""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from asl_jax.data import BatchRequest
from asl_jax.data.folder import FolderSource, load_image, load_image_with_pillow
from asl_jax.data.pipeline import ImageReadError

KW = dict(batch_size=4, seed=3, shuffle=True, drop_remainder=True)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{i}.jpg")
        rows.append(f"img/{i}.jpg,{'odd' if i % 2 else 'even'}")
    (root / "train.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")
    (root / "val.csv").write_text("image,labels\n" + "\n".join(rows[:5]) + "\n")
    return root


def _equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def _two_epochs(source):
    return [
        b for epoch in range(2) for b in source.batches(BatchRequest("train", epoch=epoch, **KW))
    ]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_equals_in_memory_over_epochs(folder, num_workers):
    memory = FolderSource(str(folder), image_size=8)
    stream = FolderSource(str(folder), image_size=8, memory_limit_bytes=0, num_workers=num_workers)
    try:
        assert memory.in_memory and not stream.in_memory
        _equal(_two_epochs(stream), _two_epochs(memory))
        # Evaluation reads the same unshuffled batches (the last one padded) every time.
        val = dict(batch_size=4, seed=0, shuffle=False, drop_remainder=False)
        expected = list(memory.batches(BatchRequest("val", **val)))
        for _ in range(2):
            _equal(list(stream.batches(BatchRequest("val", **val))), expected)
    finally:
        stream.close()


@pytest.mark.parametrize("resume_workers", [2, 0])
def test_resume_from_the_saved_state_gives_the_same_batches(folder, resume_workers):
    """Interrupted after 2 batches of epoch 1 with 2 workers, resumed from the JSON state (with
    the same or another number of workers): the batches of an uninterrupted run follow."""
    uninterrupted = _two_epochs(FolderSource(str(folder), image_size=8))
    first = FolderSource(str(folder), image_size=8, memory_limit_bytes=0, num_workers=2)
    seen = list(first.batches(BatchRequest("train", epoch=0, **KW)))
    epoch1 = first.batches(BatchRequest("train", epoch=1, **KW))
    seen += [next(epoch1), next(epoch1)]
    state = json.loads(json.dumps(epoch1.get_state()))  # as stored with a checkpoint
    first.close()
    assert state["next"] == 8 and state["num_workers"] == 2 and state["grain"]
    second = FolderSource(
        str(folder), image_size=8, memory_limit_bytes=0, num_workers=resume_workers
    )
    try:
        resumed = second.batches(BatchRequest("train", epoch=1, start_batch=2, **KW))
        resumed.set_state(state)
        _equal(seen + list(resumed), uninterrupted)
    finally:
        second.close()


def test_a_state_of_another_position_is_refused(folder):
    source = FolderSource(str(folder), image_size=8, memory_limit_bytes=0)
    state = source.batches(BatchRequest("train", epoch=0, **KW)).get_state()  # batch 0 of the run
    with pytest.raises(ValueError, match=r"state is at batch 0 of the run, but training resumes"):
        source.batches(BatchRequest("train", epoch=1, start_batch=1, **KW)).set_state(state)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_corrupt_image_names_the_file_and_does_not_hang(tmp_path, folder, num_workers):
    for name in ("train.csv", "val.csv"):
        (tmp_path / name).write_text((folder / name).read_text())
    (tmp_path / "img").mkdir()
    for i in range(24):
        (tmp_path / "img" / f"{i}.jpg").write_bytes((folder / "img" / f"{i}.jpg").read_bytes())
    source = FolderSource(
        str(tmp_path), image_size=8, memory_limit_bytes=0, num_workers=num_workers
    )
    # Truncated after the check (a file changed while training): the stream meets it.
    bad = tmp_path / "img" / "5.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    outcome = {}

    def consume():
        try:
            list(source.batches(BatchRequest("train", epoch=0, **KW)))
        except Exception as e:  # what the training process sees
            outcome["error"] = e

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(timeout=180)
    source.close()
    assert not thread.is_alive(), "the pipeline hung on a corrupt image"
    assert "error" in outcome
    assert str(bad) in str(outcome["error"])
    if num_workers == 0:
        assert isinstance(outcome["error"], ImageReadError)


@pytest.mark.parametrize("size", [224, 448])
@pytest.mark.parametrize("load", [load_image, load_image_with_pillow])
def test_draft_decoding_stays_close_to_the_full_decode(tmp_path, size, load):
    """JPEG draft mode (DCT scaling to >= the target) vs decoding at full size, both resized;
    through libjpeg-turbo (``simplejpeg``, when installed) and through Pillow."""
    y, x = np.mgrid[0:480, 0:640]
    rng = np.random.default_rng(1)
    smooth = np.stack([np.sin(x / (15 + 5 * c)) * np.cos(y / (21 + 3 * c)) for c in range(3)], -1)
    photo = np.clip(smooth * 90 + 128 + rng.normal(0, 6, (480, 640, 3)), 0, 255)
    path = tmp_path / "photo.jpg"
    Image.fromarray(photo.astype(np.uint8)).save(path, quality=90)
    with Image.open(path) as im:  # no draft: every pixel decoded
        full = np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    draft = load(str(path), size)
    error = np.abs(draft.astype(np.float64) - full).mean()
    assert error < 2.0, error  # of 255 levels; measured 0.84 at 224 px, 0 at 448 (no scaling)


NO_TENSORFLOW = """
import sys
sys.modules["tensorflow"] = None  # any `import tensorflow` now raises ImportError
import numpy as np

KEPT = []

def main(path):
    from asl_jax.data import BatchRequest, create_source
    import asl_jax.training.loop  # noqa: F401  (the training engine)
    import train.configs.default  # noqa: F401
    from asl_jax.data.folder import FolderSource

    shapes = create_source({"num_train": 8, "num_val": 4, "image_size": 8, "cache_dir": path},
                           seed=0)
    request = BatchRequest("train", batch_size=4, seed=0, shuffle=True, drop_remainder=True)
    next(shapes.batches(request))
    folder = FolderSource(sys.argv[2], image_size=8, memory_limit_bytes=0, num_workers=1)
    batch = next(folder.batches(request))
    folder.close()
    # Still referenced at exit: a batch in shared memory would leak it (a resource_tracker
    # warning at shutdown).
    KEPT.append(batch)
    types = {key: type(value) for key, value in batch.items()}
    assert set(types.values()) == {np.ndarray}, types
    assert "tensorflow_datasets" not in sys.modules
    print("ok")

if __name__ == "__main__":
    main(sys.argv[1])
"""


def test_folder_and_shapes_data_need_no_tensorflow_and_leak_nothing(tmp_path, folder):
    script = tmp_path / "no_tf.py"
    script.write_text(NO_TENSORFLOW)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "cache"), str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
    assert "leaked" not in result.stderr, result.stderr[-3000:]
