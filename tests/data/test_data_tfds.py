"""VOC 2007 / COCO 2017 through TFDS: mock data (no network) and a tiny locally prepared dataset."""

import ml_collections
import numpy as np
import pytest

tfds = pytest.importorskip(
    "tensorflow_datasets", reason="the TFDS tests need the tfds extra: pip install -e '.[tfds]'"
)

import asl_jax.data as data  # noqa: E402
from asl_jax.data import tfds as tfds_source  # noqa: E402


def _config(name, **overrides):
    return ml_collections.ConfigDict(
        {**data.DATA_DEFAULTS, "name": name, "image_size": 16, **overrides}
    )


def _epoch(src, split="train", **kw):
    args = dict(batch_size=4, seed=0, shuffle=True, drop_remainder=True)
    args.update(kw)
    return list(src.batches(split, **args))


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


class _TinyVoc(tfds.core.GeneratorBasedBuilder):
    """A VOC-like dataset prepared locally: image i is filled with the value i."""

    VERSION = tfds.core.Version("1.0.0")

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
        return {
            "train": self._generate_examples(0, 7),
            "validation": self._generate_examples(7, 12),
            "test": self._generate_examples(12, 21),
        }

    def _generate_examples(self, lo, hi):
        for i in range(lo, hi):
            image = np.full((20 + i, 30, 3), i, np.uint8)
            # Odd images hold only a "difficult" object.
            easy = [] if i % 2 else [i % 3]
            yield i, {"image": image, "labels": [i % 3], "labels_no_difficult": easy}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    builder = _TinyVoc(data_dir=str(tmp_path_factory.mktemp("tfds")))
    builder.download_and_prepare()
    # Image side 8 <= the smallest original, so the fill value survives the resize exactly.
    return tfds_source.TFDSSource("voc2007", image_size=8, builder=builder)


def test_prepared_voc_difficult_option(tiny):
    easy = tfds_source.TFDSSource(
        "voc2007", image_size=8, builder=tiny._builder, voc_use_difficult=False
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
    assert np.all(batch["image"] == ids[:, None, None, None])


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
