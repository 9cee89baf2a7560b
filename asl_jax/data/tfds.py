"""``voc2007`` and ``coco2017`` through tensorflow-datasets (``pip install 'asl-jax[tfds]'``).

* ``voc2007``: TFDS ``voc/2007``, 20 classes. Train on ``train+validation`` (VOC's *trainval*,
  5011 images), evaluate on ``test`` (4952 images), as the papers do. Labels from ``labels``, or
  ``labels_no_difficult`` when ``data.voc_use_difficult`` is False.
* ``coco2017``: TFDS ``coco/2017``, 80 classes from ``objects/label``; train on ``train`` (118287),
  evaluate on ``validation`` (5000). Images without objects are all-negative examples.

The datasets must be prepared once (TFDS downloads COCO itself; VOC too)::

    tfds build voc/2007 --data_dir=DIR     # or coco/2017; then data.data_dir=DIR

TensorFlow is imported only here, lazily, and never sees an accelerator
(``tf.config.set_visible_devices([], "GPU")``) so it cannot grab the memory JAX needs. The
pipeline is tf.data: read this host's shard (a contiguous range of the split), shuffle the
*encoded* images with a seed derived from ``(seed, epoch, process_index)``, skip ``start_batch``
batches before decoding, decode (JPEGs at a reduced DCT scale when the target is small) and
squish-resize to uint8 in parallel, batch, prefetch.

Host semantics differ from the in-memory sources in one respect, by design: each host reads its
**own shard** of the split (so no host reads the whole dataset); the rows of a global batch are
therefore not a contiguous slice of one global permutation, but every host yields the same number
of batches of ``batch_size // process_count`` rows, the shards are disjoint and together cover
the split, and the order is a pure function of ``(seed, epoch)`` for a given host count.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np

from asl_jax.data.base import Batch, check_batch_args, check_split

#: data.name -> (TFDS name, {our split: TFDS split}).
DATASETS: dict[str, tuple[str, dict[str, str]]] = {
    "voc2007": ("voc/2007", {"train": "train+validation", "val": "test"}),
    "coco2017": ("coco/2017", {"train": "train", "val": "validation"}),
}
#: COCO's 80 object categories in category-id order (TFDS's label order). TFDS knows the names
#: only from a prepared dataset's metadata; without it (e.g. under mock data) its ClassLabel says
#: "0".."79", so we name them ourselves.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
#: Encoded images kept in the shuffle buffer (~60 KB each for VOC/COCO JPEGs).
SHUFFLE_BUFFER = 8192


@functools.cache
def _tf():
    """Imports TensorFlow once, hiding every accelerator from it."""
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):
            # RuntimeError: devices already initialised (then the caller did it already);
            # ValueError: no such device type on this build.
            pass
    return tf


def _tfds():
    _tf()
    import tensorflow_datasets as tfds

    return tfds


def shard_size(num_examples: int, process_index: int, process_count: int) -> int:
    """Examples in host ``process_index``'s shard (the first hosts get one more when
    ``num_examples`` is not divisible by ``process_count``)."""
    return num_examples // process_count + int(process_index < num_examples % process_count)


class TFDSSource:
    """A :class:`~asl_jax.data.base.DataSource` over a prepared TFDS dataset.

    Args:
      name: ``"voc2007"`` or ``"coco2017"``.
      image_size: side of the squish-resized images.
      data_dir: where TFDS keeps prepared datasets (``""``: the TFDS default,
        ``~/tensorflow_datasets`` or ``$TFDS_DATA_DIR``).
      voc_use_difficult: VOC labels from ``labels`` (True) or ``labels_no_difficult`` (False).
      shuffle_buffer: encoded examples in the shuffle buffer.
      builder: a ``tfds.core.DatasetBuilder`` to use instead of ``tfds.builder(...)`` (tests use a
        tiny locally prepared dataset with the same features).

    Raises:
      ValueError: unknown name, or the dataset is not prepared (the message gives the
        ``tfds build`` command).
      ImportError: tensorflow-datasets is not installed (with the pip command).
    """

    def __init__(
        self,
        name: str,
        *,
        image_size: int,
        data_dir: str = "",
        voc_use_difficult: bool = True,
        shuffle_buffer: int = SHUFFLE_BUFFER,
        builder: Any = None,
    ) -> None:
        if name not in DATASETS:
            raise ValueError(f"data.name must be one of {tuple(DATASETS)} for TFDS; got {name!r}.")
        try:
            tfds = _tfds()
        except ImportError as e:
            raise ImportError(
                f"data.name={name!r} needs tensorflow and tensorflow-datasets: "
                "pip install 'asl-jax[tfds]'"
            ) from e
        self.name = name
        self.image_size = int(image_size)
        self.tfds_name, self._splits = DATASETS[name]
        self._data_dir = data_dir or None
        self._shuffle_buffer = int(shuffle_buffer)
        self._builder = builder or tfds.builder(self.tfds_name, data_dir=self._data_dir)
        features = self._builder.info.features
        if name == "voc2007":
            self._label_key: tuple[str, ...] = (
                ("labels",) if voc_use_difficult else ("labels_no_difficult",)
            )
            names = features["labels"].feature.names
        else:
            self._label_key = ("objects", "label")
            names = features["objects"]["label"].names
            if name == "coco2017" and names == [str(i) for i in range(len(COCO_CLASSES))]:
                names = COCO_CLASSES
        self.class_names = tuple(names)
        self.num_classes = len(names)
        self._num_examples = {split: self._count(split) for split in self._splits}

    def _dataset(self, spec: Any, *, shuffle_files: bool = False, seed: int | None = None):
        tfds = _tfds()
        if self._label_key[0] == "objects":
            wanted: dict[str, Any] = {"image": True, "objects": {"label": True}}
        else:
            wanted = {"image": True, self._label_key[0]: True}
        # Parse only the image (kept encoded: decoded after shuffle/skip) and the labels.
        decoders = tfds.decode.PartialDecoding(
            wanted, decoders={"image": tfds.decode.SkipDecoding()}
        )
        try:
            return self._builder.as_dataset(
                split=spec,
                decoders=decoders,
                shuffle_files=shuffle_files,
                read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False),
            )
        except AssertionError as e:  # TFDS's "could not find data in ..."
            raise ValueError(self._not_prepared_message(str(e))) from e

    def _not_prepared_message(self, detail: str) -> str:
        where = self._data_dir or "the TFDS default data_dir (~/tensorflow_datasets)"
        flag = f" --data_dir={self._data_dir}" if self._data_dir else ""
        return (
            f"data.name={self.name!r}: TFDS dataset {self.tfds_name} is not prepared in {where}. "
            f"Prepare it once with:\n    tfds build {self.tfds_name}{flag}\n"
            "(VOC and COCO are downloaded by TFDS; it needs network and disk space), then set "
            f"data.data_dir to that directory. TFDS said: {detail}"
        )

    def _component_sizes(self, split: str) -> list[tuple[str, int]] | None:
        """``[(tfds_split, size), ...]`` of the parts of ``split``; None without split metadata."""
        sizes = []
        for part in self._splits[split].split("+"):
            try:
                n = int(self._builder.info.splits[part].num_examples)
            except (KeyError, ValueError, TypeError):
                return None
            if n <= 0:
                return None
            sizes.append((part, n))
        return sizes

    def _count(self, split: str) -> int:
        sizes = self._component_sizes(split)
        if sizes is not None:
            return sum(n for _, n in sizes)
        # No split metadata (e.g. under tfds.testing.mock_data): ask the dataset.
        spec = self._splits[split]
        n = int(self._dataset(spec).cardinality())
        if n < 0:
            raise ValueError(f"cannot determine the size of {self.tfds_name} split {spec!r}.")
        return n

    def _host_spec(self, split: str, process_index: int, process_count: int) -> str | None:
        """The TFDS split string of this host's shard; None when the shard is empty.

        Host ``i`` reads the contiguous range ``[lo, hi)`` of the concatenated parts (sizes as in
        :func:`shard_size`). ``tfds.even_splits`` would split each part of ``train+validation``
        separately, which can leave hosts with shards of different sizes.
        """
        spec = self._splits[split]
        if process_count == 1:
            return spec
        sizes = self._component_sizes(split)
        if sizes is None:  # no metadata (mock data): let TFDS split it
            return _tfds().even_splits(spec, n=process_count)[process_index]
        n = sum(size for _, size in sizes)
        lo = sum(shard_size(n, i, process_count) for i in range(process_index))
        hi = lo + shard_size(n, process_index, process_count)
        parts, offset = [], 0
        for part, size in sizes:
            a, b = max(lo, offset), min(hi, offset + size)
            if a < b:
                parts.append(f"{part}[{a - offset}:{b - offset}]")
            offset += size
        return "+".join(parts) or None

    def num_examples(self, split: str) -> int:
        """Number of examples of ``split`` (the whole split, all hosts)."""
        return self._num_examples[check_split(split)]

    def batches(
        self,
        split: str,
        *,
        batch_size: int,
        seed: int,
        epoch: int = 0,
        start_batch: int = 0,
        shuffle: bool,
        drop_remainder: bool,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Iterator[Batch]:
        """See :class:`~asl_jax.data.base.DataSource` (and the module docstring on shards)."""
        check_split(split)
        n = self.num_examples(split)
        num_batches = check_batch_args(
            n,
            batch_size=batch_size,
            epoch=epoch,
            start_batch=start_batch,
            drop_remainder=drop_remainder,
            process_index=process_index,
            process_count=process_count,
            split=split,
        )
        local = batch_size // process_count
        shard = shard_size(n, process_index, process_count)
        # Every host yields num_batches batches: with drop_remainder that many full batches fit
        # in the smallest shard; otherwise the missing rows are padding (mask False).
        take = num_batches * local if drop_remainder else shard
        ds = self._pipeline(
            split,
            seed=seed,
            epoch=epoch,
            shuffle=shuffle,
            process_index=process_index,
            process_count=process_count,
            take=take,
            skip=start_batch * local,
            local=local,
        )
        return self._iterate(ds, local=local, count=max(num_batches - start_batch, 0))

    def _pipeline(
        self,
        split: str,
        *,
        seed: int,
        epoch: int,
        shuffle: bool,
        process_index: int,
        process_count: int,
        take: int,
        skip: int,
        local: int,
    ):
        tf = _tf()
        spec = self._host_spec(split, process_index, process_count)
        if spec is None:  # fewer examples than hosts: this host only pads
            return None
        # One seed per (seed, epoch, host): the order is reproducible and differs per epoch.
        stream = np.random.default_rng([int(seed) % (1 << 64), int(epoch), int(process_index)])
        file_seed, buffer_seed = (int(s) for s in stream.integers(0, 2**31 - 1, size=2))
        ds = self._dataset(spec, shuffle_files=shuffle, seed=file_seed if shuffle else None)
        num_classes, key, size = self.num_classes, self._label_key, self.image_size

        def select(example):
            ids = example[key[0]] if len(key) == 1 else example[key[0]][key[1]]
            onehot = tf.one_hot(tf.cast(ids, tf.int32), num_classes, dtype=tf.float32)
            # reduce_sum + minimum: an image without objects gives zeros (reduce_max would -inf).
            return example["image"], tf.minimum(tf.reduce_sum(onehot, axis=0), 1.0)

        ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if shuffle:
            ds = ds.shuffle(
                min(self._shuffle_buffer, max(take, 1)),
                seed=buffer_seed,
                reshuffle_each_iteration=False,
            )
        ds = ds.take(take).skip(skip)  # resume: skipped rows are never decoded

        def decode(encoded, labels):
            return _decode_resize(tf, encoded, size), labels

        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(local, drop_remainder=False)
        options = tf.data.Options()
        options.deterministic = True
        ds = ds.with_options(options)
        return ds.prefetch(2)

    def _iterate(self, ds, *, local: int, count: int) -> Iterator[Batch]:
        size, k = self.image_size, self.num_classes
        produced = 0
        for images, labels in ds.as_numpy_iterator() if ds is not None else ():
            if produced == count:
                break
            rows = images.shape[0]
            mask = np.zeros(local, bool)
            mask[:rows] = True
            if rows < local:
                images = np.concatenate([images, np.zeros((local - rows, size, size, 3), np.uint8)])
                labels = np.concatenate([labels, np.zeros((local - rows, k), np.float32)])
            yield {"image": images, "labels": labels.astype(np.float32), "mask": mask}
            produced += 1
        while produced < count:  # this host's shard ran out: all-padding batches
            yield {
                "image": np.zeros((local, size, size, 3), np.uint8),
                "labels": np.zeros((local, k), np.float32),
                "mask": np.zeros(local, bool),
            }
            produced += 1


def _decode_resize(tf, encoded, size: int):
    """Decodes an encoded image to RGB and squish-resizes it: uint8 [size, size, 3].

    JPEGs are decoded at the smallest DCT scale (1, 1/2, 1/4, 1/8) that keeps both sides >= size
    (like Pillow's ``draft``); the bilinear resize is antialiased when a side shrinks by > 2x.
    """

    def jpeg():
        shape = tf.io.extract_jpeg_shape(encoded)
        short = tf.minimum(shape[0], shape[1])
        # Number of ratios among 2, 4, 8 that keep ceil(short / r) >= size (monotone in r).
        level = tf.add_n([tf.cast((short + r - 1) // r >= size, tf.int32) for r in (2, 4, 8)])
        branches = [
            functools.partial(tf.io.decode_jpeg, encoded, channels=3, ratio=r) for r in (1, 2, 4, 8)
        ]
        return tf.switch_case(level, branches)

    def other():
        return tf.io.decode_image(encoded, channels=3, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    image.set_shape([None, None, 3])
    # Antialiasing (an area-aware kernel) halves the throughput; it only matters when a side
    # shrinks by more than 2x, which the DCT scaling above avoids for JPEGs.
    shape = tf.shape(image)
    image = tf.cond(
        tf.maximum(shape[0], shape[1]) > 2 * size,
        lambda: tf.image.resize(image, [size, size], method="bilinear", antialias=True),
        lambda: tf.image.resize(image, [size, size], method="bilinear", antialias=False),
    )
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
