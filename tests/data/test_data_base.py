"""Batch semantics of the in-memory source: determinism, host shards, resume, padding."""

import numpy as np
import pytest

from asl_jax.data.base import ArraySource, BatchRequest, DataSource, epoch_order, steps_per_epoch


def _source(n_train: int = 50, n_val: int = 23, k: int = 4) -> ArraySource:
    def split(n: int, offset: int):
        # Each image encodes its row id (pixel [0, 0, 0..1]) so batches can be traced back.
        images = np.zeros((n, 4, 4, 3), np.uint8)
        ids = np.arange(n) + offset
        images[:, 0, 0, 0] = ids % 256
        images[:, 0, 0, 1] = ids // 256 + 1  # never 0: padding rows are all-zero
        labels = (np.arange(n)[:, None] % k == np.arange(k)[None, :]).astype(np.float32)
        return images, labels

    return ArraySource(
        "toy", [f"c{i}" for i in range(k)], train=split(n_train, 0), val=split(n_val, 1000)
    )


def _ids(batch) -> np.ndarray:
    img = batch["image"]
    return img[:, 0, 0, 0].astype(int) + (img[:, 0, 0, 1].astype(int) - 1) * 256


def _epoch(src, split="train", **kw):
    defaults = dict(batch_size=8, seed=3, shuffle=True, drop_remainder=True)
    defaults.update(kw)
    return list(src.batches(BatchRequest(split, **defaults)))


def test_protocol_and_steps_per_epoch():
    src = _source()
    assert isinstance(src, DataSource)
    assert src.image_size == 4 and src.num_classes == 4 and src.class_names[0] == "c0"
    assert steps_per_epoch(src, 8) == 6
    with pytest.raises(ValueError, match="larger than the train split"):
        steps_per_epoch(src, 51)


def test_batch_structure_and_dtypes():
    b = _epoch(_source())[0]
    assert set(b) == {"image", "labels", "mask"}
    assert b["image"].dtype == np.uint8 and b["image"].shape == (8, 4, 4, 3)
    assert b["labels"].dtype == np.float32 and b["labels"].shape == (8, 4)
    assert b["mask"].dtype == bool and b["mask"].all()


def test_order_is_pure_function_of_seed_and_epoch():
    src = _source()
    a = [_ids(b) for b in _epoch(src, epoch=1)]
    b = [_ids(b) for b in _epoch(src, epoch=1)]
    np.testing.assert_array_equal(a, b)
    other_epoch = [_ids(b) for b in _epoch(src, epoch=2)]
    other_seed = [_ids(b) for b in _epoch(src, epoch=1, seed=4)]
    assert not np.array_equal(a, other_epoch) and not np.array_equal(a, other_seed)
    np.testing.assert_array_equal(
        epoch_order(10, seed=-1, epoch=0, shuffle=True),
        epoch_order(10, seed=-1, epoch=0, shuffle=True),
    )
    # drop_remainder: 6 full batches, no repeats, mask all True.
    flat = np.concatenate(a)
    assert len(a) == 6 and len(set(flat.tolist())) == 48


def test_labels_follow_images():
    src = _source()
    for b in _epoch(src):
        ids = _ids(b)
        np.testing.assert_array_equal(b["labels"].argmax(1), ids % 4)


@pytest.mark.parametrize("process_count", [2, 4])
@pytest.mark.parametrize("drop_remainder", [True, False])
def test_hosts_take_disjoint_contiguous_slices(process_count, drop_remainder):
    src = _source()
    kw = dict(batch_size=8, seed=1, epoch=0, shuffle=True, drop_remainder=drop_remainder)
    whole = _epoch(src, **kw)
    per_host = [
        _epoch(src, process_index=p, process_count=process_count, **kw)
        for p in range(process_count)
    ]
    for host_batches in per_host:
        assert len(host_batches) == len(whole)
        assert all(b["image"].shape[0] == 8 // process_count for b in host_batches)
    for i, global_batch in enumerate(whole):
        # Host slices concatenated in process order are exactly the global batch.
        cat = {
            key: np.concatenate([per_host[p][i][key] for p in range(process_count)])
            for key in global_batch
        }
        for key in global_batch:
            np.testing.assert_array_equal(cat[key], global_batch[key])
    seen = np.concatenate([_ids(b)[b["mask"]] for hb in per_host for b in hb])
    assert len(seen) == len(set(seen.tolist()))  # disjoint
    if not drop_remainder:
        assert sorted(seen.tolist()) == list(range(50))  # complete


def test_start_batch_resume_equals_skipping():
    src = _source()
    full = _epoch(src, epoch=5)
    resumed = _epoch(src, epoch=5, start_batch=4)
    assert len(resumed) == 2
    for a, b in zip(full[4:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
    assert _epoch(src, start_batch=6) == []


def test_eval_padding_and_mask():
    src = _source()
    batches = _epoch(src, "val", batch_size=10, shuffle=False, drop_remainder=False)
    assert [int(b["mask"].sum()) for b in batches] == [10, 10, 3]
    last = batches[-1]
    assert last["image"].shape == (10, 4, 4, 3)
    assert not last["image"][~last["mask"]].any() and not last["labels"][~last["mask"]].any()
    ids = np.concatenate([_ids(b)[b["mask"]] for b in batches])
    np.testing.assert_array_equal(ids, np.arange(1000, 1023))  # unshuffled order
    # Two hosts: host 1 gets only padding in the last batch, but the same number of rows.
    h1 = _epoch(
        src,
        "val",
        batch_size=10,
        shuffle=False,
        drop_remainder=False,
        process_index=1,
        process_count=2,
    )
    assert len(h1) == 3 and h1[-1]["image"].shape[0] == 5 and not h1[-1]["mask"].any()
    # A batch larger than the split is fine for evaluation (all padding but 23 rows).
    one = _epoch(src, "val", batch_size=32, shuffle=False, drop_remainder=False)
    assert len(one) == 1 and one[0]["mask"].sum() == 23


def test_bad_arguments():
    src = _source()
    with pytest.raises(ValueError, match="divisible by process_count=3"):
        src.batches(BatchRequest.training(batch_size=8, seed=0, process_count=3))
    with pytest.raises(ValueError, match="larger than the train split"):
        src.batches(BatchRequest.training(batch_size=64, seed=0))
    with pytest.raises(ValueError, match="split must be one of"):
        src.batches(BatchRequest("test", batch_size=8, seed=0, shuffle=True, drop_remainder=True))
    with pytest.raises(ValueError, match="process_index"):
        src.batches(BatchRequest.training(batch_size=8, seed=0, process_index=2, process_count=2))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        src.batches(BatchRequest.training(batch_size=0, seed=0))
    with pytest.raises(TypeError, match="batch_size must be an int"):
        src.batches(BatchRequest.training(batch_size=8.0, seed=0))


def test_array_source_validates_arrays():
    x = np.zeros((4, 4, 4, 3), np.uint8)
    y = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="uint8"):
        ArraySource("t", ["a", "b"], train=(x.astype(np.float32), y), val=(x, y))
    with pytest.raises(ValueError, match="labels must have shape"):
        ArraySource("t", ["a", "b", "c"], train=(x, y), val=(x, y))


def test_prefetch_gives_same_batches():
    src = _source()
    plain = _epoch(src, epoch=2)
    src.prefetch = 2
    fetched = _epoch(src, epoch=2)
    for a, b in zip(plain, fetched, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    it = src.batches(BatchRequest.training(batch_size=8, seed=0))
    next(it)
    it.close()  # stops the worker without consuming the epoch


def test_batch_request_constructors_and_checks():
    training = BatchRequest.training(batch_size=8, seed=3, epoch=2, start_batch=1)
    assert training == BatchRequest(
        "train", batch_size=8, seed=3, epoch=2, start_batch=1, shuffle=True, drop_remainder=True
    )
    evaluation = BatchRequest.evaluation("val", batch_size=10, process_index=1, process_count=2)
    assert evaluation == BatchRequest(
        "val",
        batch_size=10,
        seed=0,
        shuffle=False,
        drop_remainder=False,
        process_index=1,
        process_count=2,
    )
    assert evaluation.local_batch_size == 5
    assert evaluation.num_batches(23) == 3 and training.num_batches(50) == 6
    # NumPy ints are stored as ints: equal requests hash alike (the Grain pipeline's stream key).
    same = BatchRequest.training(batch_size=np.int64(8), seed=3, epoch=2, start_batch=1)
    assert same == training and hash(same) == hash(training)
    assert type(same.batch_size) is int
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        training.replace(epoch=-1)  # a copy is checked again
    with pytest.raises(ValueError, match="process_count must be >= 1"):
        BatchRequest("val", batch_size=8, process_count=0)
    with pytest.raises(TypeError, match="takes a BatchRequest"):
        _source().batches("train")


def test_padding_rows_are_zeroed_in_copies():
    from asl_jax.data.base import make_batch

    images = np.full((3, 2, 2, 3), 7, np.uint8)
    labels = np.full((3, 2), -1.0, np.float32)
    batch = make_batch(images, labels, np.array([True, False, True]))
    assert batch["image"][1].sum() == 0 and not batch["labels"][1].any()
    assert batch["image"][[0, 2]].min() == 7 and (batch["labels"][[0, 2]] == -1).all()
    assert images.min() == 7 and (labels == -1).all()  # the gathered arrays are unchanged
