"""VOC 2007 / COCO 2017 through TFDS: mock data (no network) and tiny locally prepared datasets.

The tiny datasets are prepared as TFRecord (read with tf.data) and as ArrayRecord (random access
through the Grain pipeline); both copies hold the same rows in the same order, so the two paths
can be compared row by row.
"""

import json
import logging
import os
import subprocess
import sys
from typing import ClassVar

import ml_collections
import numpy as np
import pytest

tfds = pytest.importorskip(
    "tensorflow_datasets", reason="the TFDS tests need the tfds extra: pip install -e '.[tfds]'"
)

import asl_jax.data as data  # noqa: E402
from asl_jax.data import tfds as tfds_source  # noqa: E402
from asl_jax.data.base import BatchRequest, batch_indices  # noqa: E402
from asl_jax.data.pipeline import ImageReadError  # noqa: E402


def _config(name, **overrides):
    return ml_collections.ConfigDict(
        {**data.DataConfig().to_dict(), "name": name, "image_size": 16, **overrides}
    )


def _epoch(src, split="train", **kw):
    args = dict(batch_size=4, seed=0, shuffle=True, drop_remainder=True)
    args.update(kw)
    return list(src.batches(BatchRequest(split, **args)))


@pytest.mark.parametrize(("name", "num_classes"), [("voc2007", 20), ("coco2017", 80)])
def test_mock_through_create_source(name, num_classes):
    with tfds.testing.mock_data(num_examples=12):
        src = data.create_source(_config(name), seed=0)
        assert isinstance(src, data.DataSource)
        assert src.name == name and src.num_classes == num_classes == len(src.class_names)
        assert src.class_names[0] == ("aeroplane" if name == "voc2007" else "person")
        assert src.num_examples("train") == 12 and src.num_examples("val") == 12
        assert data.steps_per_epoch(src, 4) == 3
        train = _epoch(src)
        assert len(train) == 3
        for b in train:
            assert b["image"].dtype == np.uint8 and b["image"].shape == (4, 16, 16, 3)
            assert b["labels"].dtype == np.float32 and b["labels"].shape == (4, num_classes)
            assert set(np.unique(b["labels"])) <= {0.0, 1.0} and b["labels"].sum() > 0
            assert b["mask"].all()
        # Deterministic order, different per epoch; resume equals skipping.
        again = _epoch(src)
        np.testing.assert_array_equal(train[1]["image"], again[1]["image"])
        other = _epoch(src, epoch=1)
        assert not all(
            np.array_equal(a["image"], b["image"]) for a, b in zip(train, other, strict=True)
        )
        resumed = _epoch(src, start_batch=2)
        assert len(resumed) == 1
        np.testing.assert_array_equal(resumed[0]["image"], train[2]["image"])
        np.testing.assert_array_equal(resumed[0]["labels"], train[2]["labels"])
        # Evaluation pads the last batch (12 = 5 + 5 + 2).
        val = _epoch(src, "val", batch_size=5, shuffle=False, drop_remainder=False)
        assert [int(b["mask"].sum()) for b in val] == [5, 5, 2]
        assert val[-1]["image"].shape == (5, 16, 16, 3) and not val[-1]["image"][2:].any()
        # The images feed the on-device augmentation as they are.
        import jax

        x = data.augment_images(jax.random.key(0), train[0]["image"], randaugment=True)
        assert x.shape == (4, 16, 16, 3)


def test_not_prepared_tells_how_to_build(tmp_path):
    with pytest.raises(ValueError, match=r"(?s)tfds build voc/2007 --data_dir=.*data\.data_dir"):
        data.create_source(_config("voc2007", data_dir=str(tmp_path)), seed=0)


def test_shard_size():
    assert [tfds_source.shard_size(11, i, 3) for i in range(3)] == [4, 4, 3]
    assert sum(tfds_source.shard_size(101, i, 8) for i in range(8)) == 101


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _TinyVoc(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A VOC-like ``voc/2007`` prepared locally: image i has the value i in its red channel."""

    name = "voc"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = (tfds.core.BuilderConfig(name="2007"),)
    SPLITS: ClassVar = {"train": (0, 7), "validation": (7, 12), "test": (12, 21)}

    def _info(self):
        labels = tfds.features.Sequence(tfds.features.ClassLabel(names=["a", "b", "c"]))
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "labels": labels,
                    "labels_no_difficult": labels,
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(*span) for split, span in self.SPLITS.items()}

    def _generate_examples(self, lo, hi):
        for i in range(lo, hi):
            image = np.full((20 + i, 30, 3), i, np.uint8)
            image[..., 1] = np.arange(30, dtype=np.uint8) * 8  # something to resize
            # Odd images hold only a "difficult" object.
            easy = [] if i % 2 else [i % 3]
            yield i, {"image": image, "labels": [i % 3], "labels_no_difficult": easy}


class _TinyVocNoValidation(_TinyVoc, skip_registration=True):
    name = "voc"
    SPLITS: ClassVar = {"train": (0, 7), "test": (12, 21)}


class _TinyCoco(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A COCO-like ``coco/2017`` of JPEGs (decoded at reduced scale); every third has no object."""

    name = "coco"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = (tfds.core.BuilderConfig(name="2017"),)

    def _info(self):
        objects = tfds.features.Sequence({"label": tfds.features.ClassLabel(num_classes=80)})
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(encoding_format="jpeg"), "objects": objects}
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": self._generate_examples(0, 10),
            "validation": self._generate_examples(10, 16),
        }

    def _generate_examples(self, lo, hi):
        for i in range(lo, hi):
            y, x = np.mgrid[0 : 20 + i, 0:30]
            image = np.stack([np.full_like(x, i * 10), x * 8, y * 6], -1).astype(np.uint8)
            yield i, {"image": image, "objects": {"label": [(i + j) % 80 for j in range(i % 3)]}}


BUILDERS = {"voc2007": _TinyVoc, "coco2017": _TinyCoco}


def _prepare(builder_class, data_dir, file_format):
    builder = builder_class(data_dir=str(data_dir), file_format=file_format)
    builder.download_and_prepare()
    return builder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """``{file_format: data_dir}`` holding both tiny datasets prepared in that format."""
    dirs = {}
    for file_format in ("tfrecord", "array_record"):
        dirs[file_format] = tmp_path_factory.mktemp(file_format)
        for builder_class in BUILDERS.values():
            _prepare(builder_class, dirs[file_format], file_format)
    return dirs


@pytest.fixture(scope="module")
def tiny(prepared):
    # Image side 8 <= the smallest original, so the fill value survives the resize exactly.
    return tfds_source.TFDSSource("voc2007", image_size=8, data_dir=str(prepared["tfrecord"]))


@pytest.fixture(scope="module")
def tiny_ar(prepared):
    return tfds_source.TFDSSource("voc2007", image_size=8, data_dir=str(prepared["array_record"]))


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_prepared_voc_difficult_option(prepared, file_format):
    easy = tfds_source.TFDSSource(
        "voc2007", image_size=8, data_dir=str(prepared[file_format]), voc_use_difficult=False
    )
    (batch,) = _epoch(easy, "val", batch_size=9, shuffle=False, drop_remainder=False)
    ids = batch["image"][:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(batch["labels"].sum(1), (ids % 2 == 0).astype(np.float32))


def _ids(batches):
    return [b["image"][:, 0, 0, 0][b["mask"]].astype(int).tolist() for b in batches]


def test_prepared_split_sizes_and_labels(tiny):
    assert tiny.num_examples("train") == 12 and tiny.num_examples("val") == 9  # trainval / test
    assert tiny.class_names == ("a", "b", "c")
    (batch,) = _epoch(tiny, "val", batch_size=9, shuffle=False, drop_remainder=False)
    ids = batch["image"][:, 0, 0, 0].astype(int)
    assert sorted(ids.tolist()) == list(range(12, 21))
    np.testing.assert_array_equal(batch["labels"].argmax(1), ids % 3)
    assert np.all(batch["image"][..., [0, 2]] == ids[:, None, None, None])  # 1: a gradient


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(("process_count", "batch_size"), [(2, 4), (3, 6), (4, 4)])
def test_prepared_host_shards_disjoint_and_complete(tiny, shuffle, process_count, batch_size):
    kw = dict(batch_size=batch_size, seed=3, shuffle=shuffle, process_count=process_count)
    local = batch_size // process_count
    hosts = [
        _epoch(tiny, "val", process_index=p, drop_remainder=False, **kw)
        for p in range(process_count)
    ]
    num_val_batches = -(-9 // batch_size)
    assert [len(h) for h in hosts] == [num_val_batches] * process_count
    assert all(b["image"].shape[0] == local for h in hosts for b in h)
    ids = [i for h in hosts for batch in _ids(h) for i in batch]
    assert sorted(ids) == list(range(12, 21))  # disjoint and complete
    # Training (train+validation = 12 examples): full batches only, the same count on every host,
    # no example twice, although the parts (7 + 5) do not split evenly.
    train = [_epoch(tiny, process_index=p, drop_remainder=True, **kw) for p in range(process_count)]
    assert [len(h) for h in train] == [12 // batch_size] * process_count
    assert all(b["mask"].all() and b["image"].shape[0] == local for h in train for b in h)
    flat = [i for h in train for batch in _ids(h) for i in batch]
    assert len(flat) == 12 // batch_size * batch_size and len(set(flat)) == len(flat)


def test_prepared_order_is_function_of_seed_and_epoch(tiny):
    a = _ids(_epoch(tiny, batch_size=4, seed=1, epoch=2))
    assert a == _ids(_epoch(tiny, batch_size=4, seed=1, epoch=2))
    assert a != _ids(_epoch(tiny, batch_size=4, seed=1, epoch=3))
    assert _ids(_epoch(tiny, batch_size=4, seed=1, epoch=2, start_batch=1)) == a[1:]


# ---- ArrayRecord: random access through the Grain pipeline ----------------------------------

ALL = dict(seed=0, shuffle=False, drop_remainder=False)


@pytest.mark.parametrize(
    ("file_format", "reader"),
    [("array_record", "random access (tfds data source) through the Grain pipeline"),
     ("tfrecord", "tf.data")],
)  # fmt: skip
@pytest.mark.parametrize("name", ["voc2007", "coco2017"])
def test_the_file_format_chooses_the_reader_and_the_log_says_which(
    prepared, caplog, name, file_format, reader
):
    config = _config(name, data_dir=str(prepared[file_format]), image_size=8)
    with caplog.at_level(logging.INFO, logger="asl_jax.data.tfds"):
        src = data.create_source(config, seed=0)
    assert src.file_format == file_format and src.random_access == (file_format == "array_record")
    assert f"{file_format} files: {reader}" in caplog.text


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("name", ["voc2007", "coco2017"])
def test_array_record_rows_equal_the_tf_data_rows(prepared, name, split):
    """The same rows, labels exactly, images up to the decoder (Pillow vs TensorFlow)."""
    (tf_rows,) = _epoch(
        tfds_source.TFDSSource(name, image_size=8, data_dir=str(prepared["tfrecord"])),
        split,
        batch_size=32,
        **ALL,
    )
    (ar_rows,) = _epoch(
        tfds_source.TFDSSource(name, image_size=8, data_dir=str(prepared["array_record"])),
        split,
        batch_size=32,
        **ALL,
    )
    np.testing.assert_array_equal(ar_rows["mask"], tf_rows["mask"])
    np.testing.assert_array_equal(ar_rows["labels"], tf_rows["labels"])
    if name == "coco2017":  # images without objects are all-negative examples
        assert (ar_rows["labels"][ar_rows["mask"]].sum(1) == 0).any()
    ar, tf = (rows["image"].astype(int) for rows in (ar_rows, tf_rows))
    # The constant channel is the row's id (ids 10 apart): libjpeg-turbo's scaled decode (the
    # folder decoder, when simplejpeg is installed) and TensorFlow's full decode differ by up to
    # 4 levels on it, less than half the spacing.
    assert np.abs(ar[..., 0] - tf[..., 0]).max() <= 4
    assert np.abs(ar - tf).mean() <= 8  # the gradients: the resize kernels differ a little


def _ar_ids(src, split="train", **kw):
    return _ids(_epoch(src, split, **kw))


def test_array_record_order_is_batch_indices(tiny_ar):
    (row_ids,) = _ar_ids(tiny_ar, batch_size=12, **ALL)  # the split in its stored order
    kw = dict(batch_size=4, seed=5, epoch=1, shuffle=True, drop_remainder=True)
    expected = [
        np.asarray(row_ids)[idx].tolist()
        for idx, _ in batch_indices(12, BatchRequest("train", **kw))
    ]
    assert _ar_ids(tiny_ar, **kw) == expected
    assert _ar_ids(tiny_ar, **kw, start_batch=2) == expected[2:]
    assert _ar_ids(tiny_ar, **{**kw, "epoch": 2}) != expected


@pytest.mark.parametrize(("split", "drop_remainder"), [("train", True), ("val", False)])
def test_array_record_host_slices_are_disjoint_and_cover_the_batch(tiny_ar, split, drop_remainder):
    kw = dict(batch_size=4, seed=1, shuffle=True, drop_remainder=drop_remainder)
    whole = _epoch(tiny_ar, split, **kw)
    hosts = [_epoch(tiny_ar, split, process_index=p, process_count=2, **kw) for p in (0, 1)]
    assert [len(h) for h in hosts] == [len(whole)] * 2
    for b, batch in enumerate(whole):
        for key in batch:  # host p holds rows [2p, 2p + 2) of every global batch
            joined = np.concatenate([hosts[0][b][key], hosts[1][b][key]])
            np.testing.assert_array_equal(joined, batch[key])


def _equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in ("image", "labels", "mask"):
            np.testing.assert_array_equal(x[key], y[key])


def test_array_record_resumes_from_the_saved_state(prepared):
    """Interrupted after 2 batches of epoch 1, resumed in a new source from the JSON state."""
    kw = dict(batch_size=4, seed=2, shuffle=True, drop_remainder=True)
    data_dir = str(prepared["array_record"])
    first = tfds_source.TFDSSource("voc2007", image_size=8, data_dir=data_dir)
    uninterrupted = [b for e in (0, 1) for b in first.batches(BatchRequest("train", epoch=e, **kw))]
    seen = list(first.batches(BatchRequest("train", epoch=0, **kw)))
    epoch1 = first.batches(BatchRequest("train", epoch=1, **kw))
    seen += [next(epoch1), next(epoch1)]
    state = json.loads(json.dumps(epoch1.get_state()))  # as stored with a checkpoint
    first.close()
    assert state["next"] == 5 and state["grain"]
    second = tfds_source.TFDSSource("voc2007", image_size=8, data_dir=data_dir)
    try:
        resumed = second.batches(BatchRequest("train", epoch=1, start_batch=2, **kw))
        resumed.set_state(state)
        _equal(seen + list(resumed), uninterrupted)
    finally:
        second.close()


def test_array_record_one_worker_process_equals_none(prepared):
    config = _config("coco2017", data_dir=str(prepared["array_record"]), image_size=8)
    kw = dict(batch_size=4, seed=4, shuffle=True, drop_remainder=True)
    in_process = data.create_source(config, seed=0)
    worker = data.create_source(ml_collections.ConfigDict({**config, "num_workers": 1}), seed=0)
    try:
        assert worker.num_workers == 1
        expected = [
            b for e in (0, 1) for b in in_process.batches(BatchRequest("train", epoch=e, **kw))
        ]
        _equal(
            [b for e in (0, 1) for b in worker.batches(BatchRequest("train", epoch=e, **kw))],
            expected,
        )
    finally:
        worker.close()


@pytest.mark.parametrize(
    ("builder_class", "file_format", "problem"),
    [
        (_TinyVoc, "parquet", r"is prepared as parquet, but only array_record"),
        (_TinyVocNoValidation, "array_record", r"has no split 'validation' \(it has test, train"),
    ],
)
def test_a_dataset_in_another_format_or_without_a_split_fails_in_one_line(
    tmp_path, builder_class, file_format, problem
):
    _prepare(builder_class, tmp_path, file_format)
    with pytest.raises(ValueError, match=problem) as error:
        data.create_source(_config("voc2007", data_dir=str(tmp_path)), seed=0)
    message = str(error.value)
    assert "\n" not in message
    assert message.endswith(f"tfds build voc/2007 --data_dir={tmp_path} --file_format=array_record")


NO_TENSORFLOW = """
import sys
import ml_collections
import asl_jax.data as data

for name in ("voc2007", "coco2017"):
    config = {**data.DataConfig().to_dict(), "name": name, "image_size": 8, "data_dir": sys.argv[1]}
    src = data.create_source(ml_collections.ConfigDict(config), seed=0)
    assert src.random_access, src.file_format
    kw = dict(batch_size=4, seed=0, shuffle=True, drop_remainder=True)
    batch = next(iter(src.batches(data.BatchRequest("train", **kw))))
    assert batch["image"].shape == (4, 8, 8, 3) and batch["labels"].sum() > 0
loaded = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
assert not loaded, loaded[:5]
print("ok")
"""


def test_the_array_record_path_imports_no_tensorflow(prepared, tmp_path):
    script = tmp_path / "no_tf.py"
    script.write_text(NO_TENSORFLOW)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, str(script), str(prepared["array_record"])],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


class _Rows(list):
    def __getitems__(self, keys):
        return [self[k] for k in keys]


def test_an_undecodable_record_names_its_row_and_split(tiny_ar):
    loader = tiny_ar.loader("val")
    assert loader.spec == "test" and loader.label_key == ("labels",)
    loader._source = _Rows([{"image": b"not an image", "labels": np.array([1])}] * 3)
    with pytest.raises(ImageReadError, match=r"row 2 of TFDS split 'test' in .*UnidentifiedImage"):
        loader(np.array([2]))
