"""Datasets and augmentation for multi-label training.

``create_source(config.data, seed=...)`` returns a :class:`DataSource` whose
``batches(BatchRequest(...))`` yields host-local batches of uint8 images, float32 multi-hot labels
and a bool mask; ``augment_images`` / ``to_float`` turn the images into float32 on device inside
the jitted step.

Datasets (``data.name``):

* ``shapes``: the embedded generated dataset (30 colour × shape classes, COCO-like imbalance).
* ``folder``: your own images, ``data.path`` holding ``train.csv`` and ``val.csv``.
* ``voc2007``, ``coco2017``: through tensorflow-datasets (``pip install 'asl-jax[tfds]'``).
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from typing import Any

from asl_jax.data.augment import AugmentConfig, augment_images, to_float
from asl_jax.data.base import (
    ArraySource,
    BatchRequest,
    DataSource,
    IndexedSource,
    steps_per_epoch,
)

DATASETS = ("shapes", "folder", "voc2007", "coco2017")

#: Defaults of the ``data`` config block (a missing field takes its default).
DATA_DEFAULTS: dict[str, Any] = {
    "name": "shapes",
    "path": "",
    "data_dir": "",
    "image_size": 32,
    "num_train": 8192,
    "num_val": 2048,
    "drop_positive_fraction": 0.0,
    "cache_dir": "",
    "skip_bad_rows": False,
    "allow_unknown_val_labels": False,
    "voc_use_difficult": True,
    "num_workers": 0,
}

#: Defaults of the ``augment`` config block.
AUGMENT_DEFAULTS: dict[str, Any] = dataclasses.asdict(AugmentConfig())

__all__ = [
    "AUGMENT_DEFAULTS",
    "DATASETS",
    "DATA_DEFAULTS",
    "ArraySource",
    "BatchRequest",
    "DataSource",
    "IndexedSource",
    "augment_images",
    "create_source",
    "steps_per_epoch",
    "to_float",
    "validate_augment_config",
    "validate_data_config",
]


def _get(config: Any, field: str, defaults: dict[str, Any]) -> Any:
    if config is None:
        return defaults[field]
    if hasattr(config, "get"):
        return config.get(field, defaults[field])
    return getattr(config, field, defaults[field])


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def validate_data_config(data_config: Any) -> None:
    """Checks the ``data`` config block; raises a ValueError naming ``data.<field>``.

    Missing fields take the defaults in :data:`DATA_DEFAULTS`. Checks: ``name`` is one of
    :data:`DATASETS`; ``image_size`` is an int >= 8; ``num_train`` / ``num_val`` are ints >= 1;
    ``num_workers`` is an int >= 0; ``drop_positive_fraction`` is in [0, 1) (and 0 unless
    ``name`` is ``shapes``); the string and bool fields have those types; for ``folder``,
    ``path`` is a directory holding ``train.csv`` and ``val.csv``. (The CSV rows and images are
    checked when the source is created.)

    Args:
      data_config: an ``ml_collections.ConfigDict`` (or a dict / object with those attributes).

    Raises:
      ValueError: naming the field, the value and what was expected.

    Example:
      >>> validate_data_config({"name": "nope"})
      Traceback (most recent call last):
      ...
      ValueError: data.name must be one of 'shapes', 'folder', 'voc2007', 'coco2017'; got 'nope'.
    """

    def get(field: str) -> Any:
        return _get(data_config, field, DATA_DEFAULTS)

    name = get("name")
    if name not in DATASETS:
        expected = ", ".join(repr(d) for d in DATASETS)
        raise ValueError(f"data.name must be one of {expected}; got {name!r}.")
    image_size = get("image_size")
    if not _is_int(image_size) or image_size < 8:
        raise ValueError(f"data.image_size must be an int >= 8 (pixels); got {image_size!r}.")
    for field in ("num_train", "num_val"):
        value = get(field)
        if not _is_int(value) or value < 1:
            raise ValueError(f"data.{field} must be an int >= 1; got {value!r}.")
    num_workers = get("num_workers")
    if not _is_int(num_workers) or num_workers < 0:
        raise ValueError(
            "data.num_workers must be an int >= 0 (worker processes decoding images; 0 = in "
            f"the training process); got {num_workers!r}."
        )
    fraction = get("drop_positive_fraction")
    if not _is_number(fraction) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.drop_positive_fraction must be in [0, 1); got {fraction!r}.")
    if fraction > 0 and name != "shapes":
        raise ValueError(
            "data.drop_positive_fraction is only supported for data.name='shapes' (simulated "
            f"missing labels); got {fraction!r} with data.name={name!r}."
        )
    for field in ("path", "data_dir", "cache_dir"):
        value = get(field)
        if not isinstance(value, str):
            raise ValueError(f"data.{field} must be a string; got {value!r}.")
    for field in ("skip_bad_rows", "allow_unknown_val_labels", "voc_use_difficult"):
        value = get(field)
        if not isinstance(value, bool):
            raise ValueError(f"data.{field} must be True or False; got {value!r}.")
    if name == "folder":
        path = get("path")
        if not path:
            raise ValueError(
                "data.path must be set for data.name='folder': a directory with train.csv and "
                "val.csv (rows 'image,labels')."
            )
        path = os.path.expanduser(path)
        if not os.path.isdir(path):
            raise ValueError(f"data.path={path!r} is not a directory.")
        for csv_name in ("train.csv", "val.csv"):
            if not os.path.isfile(os.path.join(path, csv_name)):
                raise ValueError(
                    f"data.path={path!r} has no {csv_name} (expected train.csv and val.csv with "
                    "the header 'image,labels')."
                )


def validate_augment_config(augment_config: Any) -> None:
    """Checks the ``augment`` block: ``flip`` and ``randaugment`` bools, ``cutout`` in [0, 1].

    Raises:
      ValueError: naming ``augment.<field>``.
    """
    for field in ("flip", "randaugment"):
        value = _get(augment_config, field, AUGMENT_DEFAULTS)
        if not isinstance(value, bool):
            raise ValueError(f"augment.{field} must be True or False; got {value!r}.")
    cutout = _get(augment_config, "cutout", AUGMENT_DEFAULTS)
    if not _is_number(cutout) or not 0.0 <= cutout <= 1.0:
        raise ValueError(f"augment.cutout must be a probability in [0, 1]; got {cutout!r}.")


def create_source(data_config: Any, *, seed: int) -> DataSource:
    """Builds the dataset named by ``data.name``.

    Args:
      data_config: the ``data`` config block (validated first, see :func:`validate_data_config`).
      seed: the run's seed. ``shapes`` generates its images from it and drops missing labels
        with it; the batch order is seeded separately, by the ``seed`` of the
        :class:`BatchRequest` given to ``batches()``.

    Returns:
      A :class:`DataSource`.

    Raises:
      ValueError: for an invalid config, bad folder rows (all of them listed), or a TFDS dataset
        that is not prepared (with the ``tfds build`` command to run).

    Example:
      >>> source = create_source(config.data, seed=0)  # doctest: +SKIP
      >>> source.num_classes, source.num_examples("train")  # doctest: +SKIP
      (30, 8192)
    """
    validate_data_config(data_config)

    def get(field: str) -> Any:
        return _get(data_config, field, DATA_DEFAULTS)

    name = get("name")
    if name == "shapes":
        from asl_jax.data.shapes import ShapesSource

        return ShapesSource(
            num_train=int(get("num_train")),
            num_val=int(get("num_val")),
            image_size=int(get("image_size")),
            seed=int(seed),
            drop_positive_fraction=float(get("drop_positive_fraction")),
            cache_dir=get("cache_dir"),
        )
    if name == "folder":
        from asl_jax.data.folder import FolderSource

        return FolderSource(
            get("path"),
            image_size=int(get("image_size")),
            skip_bad_rows=get("skip_bad_rows"),
            allow_unknown_val_labels=get("allow_unknown_val_labels"),
            num_workers=int(get("num_workers")),
        )
    from asl_jax.data.tfds import TFDSSource

    return TFDSSource(
        name,
        image_size=int(get("image_size")),
        data_dir=get("data_dir"),
        voc_use_difficult=get("voc_use_difficult"),
        num_workers=int(get("num_workers")),
    )
