"""The ``data`` config block: which dataset, where it lives and how its images are read."""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

from asl_jax.config_fields import (
    ConfigBlock,
    ConfigError,
    Effect,
    at_least,
    interval,
    one_of,
    option,
)
from asl_jax.data.annotation import ANNOTATIONS

#: The values of ``data.name``.
DATASETS = ("shapes", "folder", "voc2007", "coco2017")
#: The datasets whose train labels are in memory, so that a simulated annotation can change them.
IN_MEMORY_LABELS = ("shapes", "folder")

# The data a run reads changes its result, but not the compiled programs: they see only the
# image size and the number of classes, both part of the program cache's key.
RESULT, NONE = Effect.RESULT, Effect.NONE


@dataclasses.dataclass(frozen=True)
class DataConfig(ConfigBlock):
    """The ``data`` config block (see :func:`asl_jax.data.create_source`).

    Paths and the number of decoding workers can change between sessions of a run; every other
    field changes its result.
    """

    PREFIX: ClassVar[str] = "data"

    name: str = option(
        "shapes", "shapes, folder, voc2007 or coco2017", effect=RESULT, check=one_of(DATASETS)
    )
    path: str = option("", "folder: the directory with train.csv / val.csv", effect=NONE)
    data_dir: str = option(
        "", "voc2007 / coco2017: where TFDS keeps prepared data ('' = TFDS default)", effect=NONE
    )
    image_size: int = option(
        32, "images are squish-resized to this side", effect=RESULT, check=at_least(8)
    )
    num_train: int = option(
        8192, "shapes: number of generated train images", effect=RESULT, check=at_least(1)
    )
    num_val: int = option(
        2048, "shapes: number of generated val images", effect=RESULT, check=at_least(1)
    )
    # Simulated missing labels (asl_jax.data.annotation), on the train split only.
    drop_positive_fraction: float = option(
        0.0,
        "fraction of the training positives turned into negatives (missed labels)",
        effect=RESULT,
        check=interval(0.0, 1.0, high_open=True),
    )
    annotation: str = option(
        "complete",
        "which training labels are known (the rest -1): " + ", ".join(ANNOTATIONS),
        effect=RESULT,
        check=one_of(ANNOTATIONS),
    )
    annotated_fraction: float = option(
        0.5,
        "annotation=random_partial: fraction of each image's labels that is known",
        effect=RESULT,
        check=interval(0.0, 1.0, low_open=True),
    )
    annotated_per_class: int = option(
        100,
        "annotation=fixed_per_class: known positives (and negatives) per class",
        effect=RESULT,
        check=at_least(1),
    )
    cache_dir: str = option("", "shapes: cache directory ('' = ~/.cache/asl_jax)", effect=NONE)
    skip_bad_rows: bool = option(
        False, "folder: skip bad rows instead of refusing to train", effect=RESULT
    )
    allow_unknown_val_labels: bool = option(
        False,
        "folder: ignore validation labels that are not classes (with a warning)",
        effect=RESULT,
    )
    voc_use_difficult: bool = option(
        True, "voc2007: `labels` (True) or `labels_no_difficult`", effect=RESULT
    )
    num_workers: int = option(
        0,
        "folder (streamed: decoded split > 2 GiB) and voc2007 / coco2017 (prepared as "
        "ArrayRecord): Grain worker processes decoding the batches (0 = threads of the "
        "training process); may differ when resuming",
        effect=NONE,
        check=at_least(0),
    )

    @property
    def simulates_missing_labels(self) -> bool:
        """Whether the training labels are changed by a simulated annotation."""
        return self.drop_positive_fraction > 0 or self.annotation != "complete"

    def check(self) -> None:
        if self.simulates_missing_labels and self.name not in IN_MEMORY_LABELS:
            raise ConfigError(
                f"data.drop_positive_fraction / data.annotation simulate missing labels on "
                f"{' and '.join(IN_MEMORY_LABELS)} data only (their train labels are in memory); "
                f"data.name={self.name!r} streams its labels: prepare it as a folder dataset "
                "(train.csv / val.csv) to simulate an annotation"
            )
        if self.name == "folder":
            self._check_folder()

    def _check_folder(self) -> None:
        if not self.path:
            raise ConfigError(
                "data.path must be set for data.name='folder': a directory with train.csv and "
                "val.csv (rows 'image,labels')"
            )
        path = os.path.expanduser(self.path)
        if not os.path.isdir(path):
            raise ConfigError(f"data.path={path!r} is not a directory")
        for csv_name in ("train.csv", "val.csv"):
            if not os.path.isfile(os.path.join(path, csv_name)):
                raise ConfigError(
                    f"data.path={path!r} has no {csv_name} (expected train.csv and val.csv "
                    "with the header 'image,labels')"
                )
