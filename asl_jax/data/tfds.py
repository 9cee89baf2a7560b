"""``voc2007`` and ``coco2017`` through tensorflow-datasets (``pip install 'asl-jax[tfds]'``).

* ``voc2007``: TFDS ``voc/2007``, 20 classes. Train on ``train+validation`` (VOC's *trainval*,
  5011 images), evaluate on ``test`` (4952 images), as the papers do. Labels from ``labels``, or
  ``labels_no_difficult`` when ``data.voc_use_difficult`` is False.
* ``coco2017``: TFDS ``coco/2017``, 80 classes from ``objects/label``; train on ``train`` (118287),
  evaluate on ``validation`` (5000). Images without objects are all-negative examples.

The datasets must be prepared once (TFDS downloads VOC and COCO itself)::

    tfds build voc/2007 --data_dir=DIR --file_format=array_record   # or coco/2017
    # then data.data_dir=DIR

The file format of the prepared dataset chooses how it is read (the start of the run logs which):

* **ArrayRecord** (``--file_format=array_record``; recommended): random access through TFDS's
  data-source API (``builder.as_data_source``), fed through the Grain pipeline of
  :mod:`asl_jax.data.pipeline`, exactly like the streaming folder source: the order is
  :func:`asl_jax.data.base.batch_indices` (a pure function of ``(seed, epoch)``, each host its
  contiguous slice of every global batch), ``data.num_workers`` worker processes decode the
  batches (JPEG bytes -> Pillow with ``draft`` -> squish-resize, with
  :func:`asl_jax.data.folder.load_image`: the decode of the folder source and of
  ``train.predict``), and the iterator state is checkpointed, so a resumed run continues
  exactly. TensorFlow is **not imported**: ``tensorflow_datasets`` imports it lazily, the records
  are parsed and their features decoded in NumPy, and the prepared dataset is opened from its own
  files (its ``features.json``), not through TFDS's code for VOC/COCO, whose COCO part uses
  TensorFlow.
* **TFRecord** (the ``tfds build`` default): tf.data, as below. TensorFlow is imported only then.

Anything else (another file format, a missing split) fails when the data are loaded, with the
command that prepares the dataset as ArrayRecord.

The tf.data pipeline (TFRecord only): TensorFlow never sees an accelerator
(``tf.config.set_visible_devices([], "GPU")``) so it cannot grab the memory JAX needs. Read this
host's shard (a contiguous range of the split), shuffle the *encoded* images with a seed derived
from ``(seed, epoch, process_index)``, skip ``start_batch`` batches before decoding, decode (JPEGs
at a reduced DCT scale when the target is small) and squish-resize to uint8 in parallel, batch,
prefetch. Its host semantics differ from the other sources in one respect: each host reads its
**own shard** of the split (so no host reads the whole dataset); the rows of a global batch are
therefore not a contiguous slice of one global permutation, but every host yields the same number
of batches of ``batch_size // process_count`` rows, the shards are disjoint and together cover
the split, and the order is a pure function of ``(seed, epoch)`` for a given host count. It has no
checkpointable state: a resumed run skips ``start_batch`` batches of the epoch instead.
"""

from __future__ import annotations

import functools
import io
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from asl_jax.data.base import Batch, BatchRequest, check_request, check_split
from asl_jax.data.folder import load_image
from asl_jax.data.pipeline import GrainBatches, ImageReadError

logger = logging.getLogger(__name__)

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
    """Imports tensorflow_datasets, which imports TensorFlow only when something needs it."""
    import tensorflow_datasets as tfds

    return tfds


#: The file formats this source reads (TFDS's ``FileFormat`` values) and how.
ARRAY_RECORD, TFRECORD = "array_record", "tfrecord"
READERS = {
    ARRAY_RECORD: "random access (tfds data source) through the Grain pipeline",
    TFRECORD: "tf.data",
}


def _builder_from_files(tfds_name: str, data_dir: str | None) -> Any:
    """The prepared dataset opened from its files (no TFDS dataset code); None if not found."""
    tfds = _tfds()
    try:
        return tfds.core.read_only_builder.builder_from_files(tfds_name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        return None


def _file_format(builder: Any) -> str:
    """``"array_record"`` when the dataset has ArrayRecord files, else its (only) format."""
    info = builder.info
    formats = {f.value for f in info.available_file_formats()} or {"none"}
    if ARRAY_RECORD in formats:
        return ARRAY_RECORD
    return info.file_format.value if info.file_format is not None else sorted(formats)[0]


def shard_size(num_examples: int, process_index: int, process_count: int) -> int:
    """Examples in host ``process_index``'s shard (the first hosts get one more when
    ``num_examples`` is not divisible by ``process_count``)."""
    return num_examples // process_count + int(process_index < num_examples % process_count)


class TFDSSource(GrainBatches):
    """A :class:`~asl_jax.data.base.DataSource` over a prepared TFDS dataset.

    Args:
      name: ``"voc2007"`` or ``"coco2017"``.
      image_size: side of the squish-resized images.
      data_dir: where TFDS keeps prepared datasets (``""``: the TFDS default,
        ``~/tensorflow_datasets`` or ``$TFDS_DATA_DIR``).
      voc_use_difficult: VOC labels from ``labels`` (True) or ``labels_no_difficult`` (False).
      shuffle_buffer: tf.data path: encoded examples in the shuffle buffer.
      builder: a ``tfds.core.DatasetBuilder`` to use instead of finding ``name`` in ``data_dir``
        (tests use a tiny locally prepared dataset with the same features).
      num_workers: ArrayRecord path: worker processes decoding the batches (``data.num_workers``;
        0 = threads of the training process).

    Attributes (beyond the protocol):
      file_format: ``"array_record"`` (random access, Grain) or ``"tfrecord"`` (tf.data).

    Raises:
      ValueError: unknown name; the dataset is not prepared, is in another file format, or lacks
        a split (one line, with the ``tfds build`` command).
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
        num_workers: int = 0,
    ) -> None:
        if name not in DATASETS:
            raise ValueError(f"data.name must be one of {tuple(DATASETS)} for TFDS; got {name!r}.")
        try:
            tfds = _tfds()
        except ImportError as e:
            raise ImportError(
                f"data.name={name!r} needs tensorflow-datasets (and tensorflow for TFRecord "
                "data): pip install 'asl-jax[tfds]'"
            ) from e
        self.name = name
        self.image_size = int(image_size)
        self.num_workers = int(num_workers)
        self.tfds_name, self._splits = DATASETS[name]
        self._data_dir = data_dir or None
        self._shuffle_buffer = int(shuffle_buffer)
        if builder is None:
            # From its files first: TFDS's own COCO code imports TensorFlow. Not found (not
            # prepared, or TFDS mock data): TFDS's registered builder, read with tf.data.
            builder = _builder_from_files(self.tfds_name, self._data_dir)
        if builder is None:
            builder = tfds.builder(self.tfds_name, data_dir=self._data_dir)
        self._builder = builder
        self.file_format = _file_format(builder)
        if self.file_format not in READERS:
            raise ValueError(
                f"data.name={name!r}: TFDS dataset {self.tfds_name} in {builder.data_dir} is "
                f"prepared as {self.file_format}, but only {ARRAY_RECORD} (random access) and "
                f"{TFRECORD} (tf.data) can be read; prepare it again with: {self._build_command()}"
            )
        self._check_splits()
        self._label_key = self._labels_of(voc_use_difficult)
        self.num_classes = len(self.class_names)
        self._num_examples = {split: self._count(split) for split in self._splits}
        if "tensorflow" in sys.modules:  # imported anyway (e.g. by the caller): keep it off GPUs
            _tf()
        logger.info(
            "%s: TFDS %s from %s, %s files: %s%s",
            name,
            self.tfds_name,
            builder.data_dir,
            self.file_format,
            READERS[self.file_format],
            f" (data.num_workers={self.num_workers})" if self.random_access else "",
        )

    @property
    def random_access(self) -> bool:
        """Whether the dataset is read by random access through the Grain pipeline."""
        return self.file_format == ARRAY_RECORD

    def _labels_of(self, voc_use_difficult: bool) -> tuple[str, ...]:
        """Sets ``class_names``; returns the key path of the label ids in an example."""
        features = self._builder.info.features
        if self.name == "voc2007":
            self.class_names = tuple(features["labels"].feature.names)
            return ("labels",) if voc_use_difficult else ("labels_no_difficult",)
        names = features["objects"]["label"].names
        if names == [str(i) for i in range(len(COCO_CLASSES))]:
            names = COCO_CLASSES
        self.class_names = tuple(names)
        return ("objects", "label")

    def _build_command(self) -> str:
        flag = f" --data_dir={self._data_dir}" if self._data_dir else ""
        return f"tfds build {self.tfds_name}{flag} --file_format={ARRAY_RECORD}"

    def _check_splits(self) -> None:
        """Every TFDS split we read exists (when the dataset lists its splits; mock data don't)."""
        have = set(self._builder.info.splits.keys())
        if not have and not self.random_access:
            return
        needed = [part for spec in self._splits.values() for part in spec.split("+")]
        missing = [part for part in needed if part not in have]
        if missing:
            raise ValueError(
                f"data.name={self.name!r}: TFDS dataset {self.tfds_name} in "
                f"{self._builder.data_dir} has no split {missing[0]!r} (it has "
                f"{', '.join(sorted(have)) or 'none'}; {self.name} needs {', '.join(needed)}); "
                f"prepare it again with: {self._build_command()}"
            )

    def _dataset(self, spec: Any, *, shuffle_files: bool = False, seed: int | None = None):
        _tf()  # before TFDS imports it: hide the accelerators
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
        first = detail.strip().splitlines()[0] if detail.strip() else ""
        return (
            f"data.name={self.name!r}: TFDS dataset {self.tfds_name} is not prepared in {where}; "
            f"prepare it once with: {self._build_command()} (TFDS downloads VOC and COCO itself: "
            "it needs network and disk space), then set data.data_dir to that directory. "
            f"TFDS said: {first}"
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

    def batches(self, request: BatchRequest) -> Iterator[Batch]:
        """See :class:`~asl_jax.data.base.DataSource` and the module docstring.

        ArrayRecord: the iterator of an epoch has ``get_state()`` / ``set_state()``
        (:class:`~asl_jax.data.pipeline.EpochBatches`). TFRecord: this host's shard, by tf.data.
        """
        if self.random_access:
            return self.grain_batches(request)
        return self._tf_batches(request)

    def loader(self, split: str) -> RecordLoader:
        """The decoder of ``split``'s rows by index (what the Grain pipeline runs)."""
        return RecordLoader(
            str(self._builder.data_dir),
            self._splits[check_split(split)],
            label_key=self._label_key,
            num_classes=self.num_classes,
            image_size=self.image_size,
        )

    def _tf_batches(self, request: BatchRequest) -> Iterator[Batch]:
        request = check_request(request)
        n = self.num_examples(request.split)
        num_batches = request.num_batches(n)
        local = request.local_batch_size
        shard = shard_size(n, request.process_index, request.process_count)
        # Every host yields num_batches batches: with drop_remainder that many full batches fit
        # in the smallest shard; otherwise the missing rows are padding (mask False).
        take = num_batches * local if request.drop_remainder else shard
        ds = self._pipeline(request, take=take, skip=request.start_batch * local, local=local)
        return self._iterate(ds, local=local, count=max(num_batches - request.start_batch, 0))

    def _pipeline(self, request: BatchRequest, *, take: int, skip: int, local: int):
        tf = _tf()
        spec = self._host_spec(request.split, request.process_index, request.process_count)
        if spec is None:  # fewer examples than hosts: this host only pads
            return None
        # One seed per (seed, epoch, host): the order is reproducible and differs per epoch.
        stream = np.random.default_rng(
            [int(request.seed) % (1 << 64), int(request.epoch), int(request.process_index)]
        )
        file_seed, buffer_seed = (int(s) for s in stream.integers(0, 2**31 - 1, size=2))
        shuffle = request.shuffle
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


class RecordLoader:
    """Reads and decodes rows of a split of a prepared ArrayRecord dataset, by index.

    Picklable (sent to Grain's worker processes): it holds the dataset's directory and opens the
    TFDS data source in the process that first reads from it.

    Args:
      builder_dir: the prepared dataset's directory (holding ``dataset_info.json``).
      spec: the TFDS split (e.g. ``"train+validation"``).
      label_key: the key path of the label ids in an example (``("labels",)``,
        ``("objects", "label")``).
      num_classes: ``K``.
      image_size: side of the squish-resized images.
    """

    def __init__(
        self,
        builder_dir: str,
        spec: str,
        *,
        label_key: Sequence[str],
        num_classes: int,
        image_size: int,
    ) -> None:
        self.builder_dir, self.spec, self.label_key = builder_dir, spec, tuple(label_key)
        self.num_classes, self.image_size = int(num_classes), int(image_size)
        self._source: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}  # open files do not travel

    def rows(self) -> Any:
        """The TFDS data source of the split (a sequence of examples, image bytes undecoded)."""
        if self._source is None:
            tfds = _tfds()
            builder = tfds.builder_from_directory(self.builder_dir)
            self._source = builder.as_data_source(
                self.spec, decoders={"image": tfds.decode.SkipDecoding()}
            )
        return self._source

    def __call__(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(images uint8 [n, S, S, 3], labels float32 [n, K] multi-hot)`` of rows ``indices``.

        Raises:
          ImageReadError: naming the split and row whose image cannot be decoded.
        """
        examples = self.rows().__getitems__([int(i) for i in indices])
        images = np.empty((len(examples), self.image_size, self.image_size, 3), np.uint8)
        labels = np.zeros((len(examples), self.num_classes), np.float32)
        for j, (i, example) in enumerate(zip(indices.tolist(), examples, strict=True)):
            try:
                images[j] = load_image(io.BytesIO(example["image"]), self.image_size)
            except Exception as e:  # Pillow raises many types for corrupt data
                raise ImageReadError(
                    f"cannot decode the image of row {i} of TFDS split {self.spec!r} in "
                    f"{self.builder_dir} ({type(e).__name__}: {e})."
                ) from e
            ids = example[self.label_key[0]]
            for key in self.label_key[1:]:
                ids = ids[key]
            labels[j, np.asarray(ids, np.int64)] = 1.0
        return images, labels


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
