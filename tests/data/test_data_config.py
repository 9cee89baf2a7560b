"""``DataConfig`` / ``AugmentConfig`` / ``create_source``: field errors and dispatch."""

import ml_collections
import numpy as np
import pytest

import asl_jax.data as data


def _config(**overrides) -> ml_collections.ConfigDict:
    # Built from a dict: a ConfigDict would refuse to change a field's type afterwards.
    return ml_collections.ConfigDict({**data.DataConfig().to_dict(), **overrides})


def test_defaults_are_valid():
    assert data.DataConfig.from_mapping(_config()) == data.DataConfig()
    assert data.DataConfig.from_mapping({}) == data.DataConfig()  # missing fields: defaults
    data.AugmentConfig.from_mapping(ml_collections.ConfigDict(data.AugmentConfig().to_dict()))


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"name": "imagenet"}, r"data\.name='imagenet': expected one of shapes, folder"),
        ({"image_size": 4}, r"data\.image_size=4: expected an integer >= 8"),
        ({"image_size": 32.0}, r"data\.image_size"),
        ({"num_train": 0}, r"data\.num_train=0: expected an integer >= 1"),
        ({"num_val": -3}, r"data\.num_val=-3: expected an integer >= 1"),
        (
            {"drop_positive_fraction": 1.0},
            r"data\.drop_positive_fraction=1\.0: expected a number in \[0\.0, 1\.0\)",
        ),
        ({"drop_positive_fraction": -0.1}, r"data\.drop_positive_fraction"),
        (
            {"name": "voc2007", "drop_positive_fraction": 0.3},
            r"missing labels on shapes and folder data only",
        ),
        ({"cache_dir": 3}, r"data\.cache_dir=3: expected a string"),
        ({"skip_bad_rows": 1}, r"data\.skip_bad_rows=1: expected True or False"),
        ({"voc_use_difficult": "yes"}, r"data\.voc_use_difficult"),
        ({"name": "folder"}, r"data\.path must be set for data\.name='folder'"),
        ({"name": "folder", "path": "/nonexistent/dir"}, r"data\.path=.* is not a directory"),
    ],
)
def test_invalid_fields(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        data.DataConfig.from_mapping(_config(**overrides))
    with pytest.raises(ValueError, match=pattern):
        data.create_source(_config(**overrides), seed=0)


def test_folder_path_without_csv(tmp_path):
    (tmp_path / "train.csv").write_text("image,labels\n")
    with pytest.raises(ValueError, match=r"has no val\.csv"):
        data.DataConfig.from_mapping(_config(name="folder", path=str(tmp_path)))


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [({"cutout": 2.0}, r"augment\.cutout"), ({"flip": "no"}, r"augment\.flip")],
)
def test_invalid_augment_fields(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        data.AugmentConfig.from_mapping({**data.AugmentConfig().to_dict(), **overrides})


def test_create_shapes_source(tmp_path):
    config = _config(num_train=16, num_val=8, image_size=16, cache_dir=str(tmp_path))
    source = data.create_source(config, seed=1)
    assert isinstance(source, data.DataSource)
    assert source.name == "shapes" and source.num_classes == 30 and source.image_size == 16
    assert source.num_examples("train") == 16 and source.num_examples("val") == 8
    assert data.steps_per_epoch(source, 4) == 4
    other = data.create_source(config, seed=2)
    assert not np.array_equal(source.arrays("train")[0], other.arrays("train")[0])
