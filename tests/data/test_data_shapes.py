"""The embedded ``shapes`` dataset: determinism, cache, missing labels, imbalance."""

import os

import numpy as np
import pytest

from asl_jax.data import BatchRequest, shapes


def test_class_list():
    assert len(shapes.CLASS_NAMES) == 30 == shapes.NUM_CLASSES
    assert shapes.CLASS_NAMES[0] == "red_circle"
    assert len(set(shapes.CLASS_NAMES)) == 30
    prior = shapes.class_prior()
    assert prior.shape == (30,) and np.isclose(prior.sum(), 1.0)
    assert prior.max() / prior.min() == pytest.approx(30.0)  # Zipf over 30 ranks
    # The five most frequent classes have five different colours and five different shapes.
    top = np.argsort(-prior)[:5]
    assert len(set(top // 6)) == 5 and len(set(top % 6)) == 5


def test_generate_is_deterministic_and_seeded():
    a = shapes.generate(40, image_size=16, seed=7)
    b = shapes.generate(40, image_size=16, seed=7)
    c = shapes.generate(40, image_size=16, seed=8)
    v = shapes.generate(40, image_size=16, seed=7, split_id=1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], v[0])  # train and val are different images
    images, labels = a
    assert images.dtype == np.uint8 and images.shape == (40, 16, 16, 3)
    assert labels.dtype == np.uint8 and labels.shape == (40, 30)
    assert 1 <= labels.sum(1).min() and labels.sum(1).max() <= 4


def test_generate_across_chunks():
    n = shapes._CHUNK + 3  # the noise is seeded per fixed-size chunk
    images, labels = shapes.generate(n, image_size=8, seed=1)
    again, _ = shapes.generate(n, image_size=8, seed=1)
    assert images.shape[0] == labels.shape[0] == n
    np.testing.assert_array_equal(images[-3:], again[-3:])


def test_imbalance_statistics():
    _, labels = shapes.generate(3000, image_size=8, seed=0)
    stats = shapes.label_statistics(labels)
    assert 1.8 < stats["positives_per_image_mean"] < 2.2  # ~2 of 30, COCO-like sparsity
    assert stats["images_without_positives"] == 0
    freq = labels.mean(0)
    assert freq.max() > 0.35 and freq.min() < 0.03  # head ~45%, tail ~1.5% of the images
    # Empirical frequencies follow the prior's ranking at the extremes.
    prior = shapes.class_prior()
    assert np.argmax(freq) == np.argmax(prior)


def test_objects_are_drawn_in_their_colour():
    # A single-object image contains many pixels close to its class's colour.
    images, labels = shapes.generate(60, image_size=32, seed=2)
    palette = np.array(list(shapes.COLOURS.values()), float)
    single = np.flatnonzero(labels.sum(1) == 1)
    assert single.size > 5
    for i in single:
        k = int(np.flatnonzero(labels[i])[0])
        dist = np.linalg.norm(images[i].astype(float) - palette[k // 6], axis=-1)
        assert (dist < 60).sum() >= 20, shapes.CLASS_NAMES[k]


def test_cache_roundtrip(tmp_path):
    kw = dict(num_train=20, num_val=10, image_size=16, seed=3, cache_dir=str(tmp_path))
    src = shapes.ShapesSource(**kw)
    files = os.listdir(tmp_path)
    assert files == [os.path.basename(src.cache_file)]
    assert "v1" in files[0] and "seed3" in files[0] and "px16" in files[0]
    mtime = os.path.getmtime(src.cache_file)
    again = shapes.ShapesSource(**kw)
    assert os.path.getmtime(src.cache_file) == mtime  # read, not rewritten
    np.testing.assert_array_equal(src.arrays("train")[0], again.arrays("train")[0])
    np.testing.assert_array_equal(src.arrays("val")[1], again.arrays("val")[1])
    # A different parameter gets its own file.
    shapes.ShapesSource(**{**kw, "seed": 4})
    assert len(os.listdir(tmp_path)) == 2


def test_corrupt_cache_is_regenerated(tmp_path):
    kw = dict(num_train=12, num_val=6, image_size=8, seed=0, cache_dir=str(tmp_path))
    good = shapes.ShapesSource(**kw)
    with open(good.cache_file, "wb") as f:
        f.write(b"not an npz")
    again = shapes.ShapesSource(**kw)
    np.testing.assert_array_equal(good.arrays("train")[0], again.arrays("train")[0])
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_unwritable_cache_dir_still_works(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    src = shapes.ShapesSource(num_train=8, num_val=4, image_size=8, cache_dir=str(blocker / "d"))
    assert src.num_examples("train") == 8


def test_source_batches(tmp_path):
    src = shapes.ShapesSource(num_train=24, num_val=10, image_size=16, cache_dir=str(tmp_path))
    assert src.name == "shapes" and src.num_classes == 30 and src.image_size == 16
    b = next(
        src.batches(BatchRequest("train", batch_size=8, seed=0, shuffle=True, drop_remainder=True))
    )
    assert b["image"].shape == (8, 16, 16, 3) and b["labels"].shape == (8, 30)
    assert set(np.unique(b["labels"])) <= {0.0, 1.0}


def test_concurrent_writers_leave_a_valid_cache(tmp_path):
    # Two writers of the same file (e.g. two hosts sharing a home directory): each writes its own
    # temporary file and renames it atomically, so the cache is always complete.
    import threading

    kw = dict(num_train=64, num_val=16, image_size=16, seed=9, cache_dir=str(tmp_path))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(shapes.load_arrays(**kw))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and [p.name for p in tmp_path.iterdir()] == [
        os.path.basename(shapes.cache_path(**kw))
    ]
    cached = shapes.load_arrays(**kw)
    np.testing.assert_array_equal(cached["train_images"], results[0]["train_images"])
