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

from collections.abc import Mapping
from typing import Any

from asl_jax.data.annotation import ANNOTATIONS, simulate_missing_labels
from asl_jax.data.augment import AugmentConfig, augment_images, to_float
from asl_jax.data.base import (
    ArraySource,
    BatchRequest,
    DataSource,
    IndexedSource,
    split_labels,
    steps_per_epoch,
)
from asl_jax.data.config import DATASETS, DataConfig

__all__ = [
    "ANNOTATIONS",
    "DATASETS",
    "ArraySource",
    "AugmentConfig",
    "BatchRequest",
    "DataConfig",
    "DataSource",
    "IndexedSource",
    "augment_images",
    "create_source",
    "steps_per_epoch",
    "to_float",
]


def create_source(data: DataConfig | Mapping[str, Any], *, seed: int) -> DataSource:
    """Builds the dataset named by ``data.name``.

    Args:
      data: the ``data`` config block (a :class:`DataConfig`, or a mapping of its fields, which
        is checked as the config is: missing fields take their defaults).
      seed: the run's seed. ``shapes`` generates its images from it, and the simulated missing
        labels of the train split (``drop_positive_fraction``, ``annotation``; see
        :mod:`asl_jax.data.annotation`) are drawn with it; the batch order is seeded
        separately, by the ``seed`` of the :class:`BatchRequest` given to ``batches()``.

    Returns:
      A :class:`DataSource`.

    Raises:
      ConfigError: (a ValueError) an invalid field, naming it.
      ValueError: bad folder rows (all of them listed), or a TFDS dataset that is not prepared
        (with the ``tfds build`` command to run).

    Examples:
      >>> source = create_source(DataConfig(num_train=16, num_val=8), seed=0)  # doctest: +SKIP
      >>> source.num_classes, source.num_examples("train")  # doctest: +SKIP
      (30, 16)
    """
    if not isinstance(data, DataConfig):
        data = DataConfig.from_mapping(data)
    source = _open_source(data, seed=seed)
    if data.simulates_missing_labels:
        source.replace_labels(
            "train",
            simulate_missing_labels(
                split_labels(source, "train"),
                seed=seed,
                drop_positive_fraction=data.drop_positive_fraction,
                annotation=data.annotation,
                annotated_fraction=data.annotated_fraction,
                annotated_per_class=data.annotated_per_class,
            ),
        )
    return source


def _open_source(data: DataConfig, *, seed: int) -> DataSource:
    if data.name == "shapes":
        from asl_jax.data.shapes import ShapesSource

        return ShapesSource(
            num_train=data.num_train,
            num_val=data.num_val,
            image_size=data.image_size,
            seed=seed,
            cache_dir=data.cache_dir,
        )
    if data.name == "folder":
        from asl_jax.data.folder import FolderSource

        return FolderSource(
            data.path,
            image_size=data.image_size,
            skip_bad_rows=data.skip_bad_rows,
            allow_unknown_val_labels=data.allow_unknown_val_labels,
            num_workers=data.num_workers,
        )
    from asl_jax.data.tfds import TFDSSource

    return TFDSSource(
        data.name,
        image_size=data.image_size,
        data_dir=data.data_dir,
        voc_use_difficult=data.voc_use_difficult,
        num_workers=data.num_workers,
    )
