"""``validate_data_config`` / ``create_source``: field errors and dispatch."""

import ml_collections
import numpy as np
import pytest

import asl_jax.data as data


def _config(**overrides) -> ml_collections.ConfigDict:
    # Built from a dict: a ConfigDict would refuse to change a field's type afterwards.
    return ml_collections.ConfigDict({**data.DATA_DEFAULTS, **overrides})


def test_defaults_are_valid():
    data.validate_data_config(_config())
    data.validate_data_config({})  # missing fields take their defaults
    data.validate_augment_config(ml_collections.ConfigDict(data.AUGMENT_DEFAULTS))


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"name": "imagenet"}, r"data\.name must be one of 'shapes', 'folder'"),
        ({"image_size": 4}, r"data\.image_size must be an int >= 8"),
        ({"image_size": 32.0}, r"data\.image_size"),
        ({"num_train": 0}, r"data\.num_train must be an int >= 1"),
        ({"num_val": -3}, r"data\.num_val must be an int >= 1"),
        ({"drop_positive_fraction": 1.0}, r"data\.drop_positive_fraction must be in \[0, 1\)"),
        ({"drop_positive_fraction": -0.1}, r"data\.drop_positive_fraction"),
        ({"name": "voc2007", "drop_positive_fraction": 0.3}, r"only supported for.*shapes"),
        ({"cache_dir": 3}, r"data\.cache_dir must be a string"),
        ({"skip_bad_rows": 1}, r"data\.skip_bad_rows must be True or False"),
        ({"voc_use_difficult": "yes"}, r"data\.voc_use_difficult"),
        ({"name": "folder"}, r"data\.path must be set for data\.name='folder'"),
        ({"name": "folder", "path": "/nonexistent/dir"}, r"data\.path=.* is not a directory"),
    ],
)
def test_invalid_fields(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        data.validate_data_config(_config(**overrides))
    with pytest.raises(ValueError, match=pattern):
        data.create_source(_config(**overrides), seed=0)


def test_folder_path_without_csv(tmp_path):
    (tmp_path / "train.csv").write_text("image,labels\n")
    with pytest.raises(ValueError, match=r"has no val\.csv"):
        data.validate_data_config(_config(name="folder", path=str(tmp_path)))


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [({"cutout": 2.0}, r"augment\.cutout"), ({"flip": "no"}, r"augment\.flip")],
)
def test_invalid_augment_fields(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        data.validate_augment_config({**data.AUGMENT_DEFAULTS, **overrides})


def test_create_shapes_source(tmp_path):
    config = _config(num_train=16, num_val=8, image_size=16, cache_dir=str(tmp_path))
    source = data.create_source(config, seed=1)
    assert isinstance(source, data.DataSource)
    assert source.name == "shapes" and source.num_classes == 30 and source.image_size == 16
    assert source.num_examples("train") == 16 and source.num_examples("val") == 8
    assert data.steps_per_epoch(source, 4) == 4
    other = data.create_source(config, seed=2)
    assert not np.array_equal(source.arrays("train")[0], other.arrays("train")[0])
