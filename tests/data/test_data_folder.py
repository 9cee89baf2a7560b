"""The ``folder`` source: happy path, image modes, class order, and every error case."""

import logging
import re

import ml_collections
import numpy as np
import pytest
from PIL import Image

import asl_jax.data as data
from asl_jax.data import BatchRequest
from asl_jax.data.folder import FolderDataError, FolderSource, load_image

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _write_images(root):
    (root / "img").mkdir()
    Image.new("RGB", (40, 30), RED).save(root / "img" / "red.jpg", quality=95)
    Image.new("RGB", (17, 23), GREEN).save(root / "img" / "green.png")
    Image.new("L", (20, 20), 128).save(root / "img" / "grey.png")
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # fully transparent -> white
    rgba.save(root / "img" / "clear.png")
    Image.new("RGB", (64, 8), BLUE).convert("P").save(root / "img" / "blue_palette.png")
    Image.new("L", (12, 12), 200).save(root / "img" / "grey.jpg")


def _dataset(root, train_rows, val_rows, classes=None):
    _write_images(root)
    (root / "train.csv").write_text("image,labels\n" + "".join(r + "\n" for r in train_rows))
    (root / "val.csv").write_text("image,labels\n" + "".join(r + "\n" for r in val_rows))
    if classes is not None:
        (root / "classes.txt").write_text("".join(c + "\n" for c in classes))
    return str(root)


GOOD_TRAIN = [
    "img/red.jpg,red warm",
    "img/green.png,green",
    "img/grey.png,grey",
    "img/clear.png,",  # no labels: a negative example
    "img/blue_palette.png,blue cold cold",  # duplicates collapse
]
GOOD_VAL = ["img/grey.jpg,grey", "img/red.jpg,warm"]


def test_load_image_modes(tmp_path):
    _write_images(tmp_path)
    red = load_image(str(tmp_path / "img" / "red.jpg"), 8)
    assert red.shape == (8, 8, 3) and red.dtype == np.uint8
    assert np.abs(red.astype(int) - RED).max() < 8
    grey = load_image(str(tmp_path / "img" / "grey.png"), 8)
    assert np.all(grey == 128)
    assert np.all(load_image(str(tmp_path / "img" / "clear.png"), 8) == 255)
    assert np.all(load_image(str(tmp_path / "img" / "blue_palette.png"), 8) == BLUE)
    im16 = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    im16.save(tmp_path / "deep.png")
    assert np.all(load_image(str(tmp_path / "deep.png"), 4) == 255)


def test_happy_path(tmp_path):
    src = FolderSource(_dataset(tmp_path, GOOD_TRAIN, GOOD_VAL), image_size=8)
    assert isinstance(src, data.DataSource)
    assert src.class_names == ("blue", "cold", "green", "grey", "red", "warm")  # sorted union
    assert src.num_classes == 6 and src.image_size == 8
    assert src.num_examples("train") == 5 and src.num_examples("val") == 2
    assert src.in_memory and src.skipped == {"train": 0, "val": 0} and src.problems == []
    y = src.labels("train")
    np.testing.assert_array_equal(y[0], [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(y[3], 0)
    np.testing.assert_array_equal(y[4], [1, 1, 0, 0, 0, 0])
    batches = list(
        src.batches(BatchRequest("val", batch_size=4, seed=0, shuffle=False, drop_remainder=False))
    )
    assert len(batches) == 1 and batches[0]["mask"].tolist() == [True, True, False, False]
    assert batches[0]["image"].shape == (4, 8, 8, 3)
    assert np.all(batches[0]["image"][0] == 200)


def test_streaming_equals_in_memory(tmp_path):
    path = _dataset(tmp_path, GOOD_TRAIN, GOOD_VAL)
    mem = FolderSource(path, image_size=8)
    stream = FolderSource(path, image_size=8, memory_limit_bytes=0, num_workers=2)
    assert not stream.in_memory
    kw = dict(batch_size=2, seed=4, epoch=1, shuffle=True, drop_remainder=True)
    for a, b in zip(
        mem.batches(BatchRequest("train", **kw)),
        stream.batches(BatchRequest("train", **kw)),
        strict=True,
    ):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_create_source_folder(tmp_path):
    config = ml_collections.ConfigDict(
        {
            **data.DataConfig().to_dict(),
            "name": "folder",
            "path": _dataset(tmp_path, GOOD_TRAIN, GOOD_VAL),
        }
    )
    src = data.create_source(config, seed=0)
    assert src.name == "folder" and src.image_size == 32 and src.num_classes == 6


def test_classes_txt_fixes_order(tmp_path):
    classes = ["warm", "red", "grey", "green", "cold", "blue", "unused"]
    src = FolderSource(_dataset(tmp_path, GOOD_TRAIN, GOOD_VAL, classes), image_size=8)
    assert src.class_names == tuple(classes)
    np.testing.assert_array_equal(src.labels("train")[0], [1, 1, 0, 0, 0, 0, 0])


def test_train_label_outside_classes_txt(tmp_path):
    path = _dataset(tmp_path, GOOD_TRAIN, GOOD_VAL, ["red", "warm", "green", "grey"])
    with pytest.raises(
        FolderDataError, match=r"train\.csv:6: unknown class\(es\) \['blue', 'cold'\]"
    ):
        FolderSource(path, image_size=8)


def test_bad_classes_txt(tmp_path):
    path = _dataset(tmp_path, GOOD_TRAIN, GOOD_VAL, ["red", "warm", "red", "two words"])
    with pytest.raises(FolderDataError) as info:
        FolderSource(path, image_size=8, skip_bad_rows=True)  # not skippable
    text = str(info.value)
    assert "classes.txt:3: duplicate class 'red' (first on line 1)" in text
    assert "classes.txt:4: 'two words' cannot be a label" in text


def test_unknown_val_label(tmp_path, caplog):
    path = _dataset(tmp_path, GOOD_TRAIN, [*GOOD_VAL, "img/green.png,green zebra"])
    with pytest.raises(FolderDataError, match=r"val\.csv:4: unknown class\(es\) \['zebra'\]"):
        FolderSource(path, image_size=8)
    with caplog.at_level(logging.WARNING, logger="asl_jax.data.folder"):
        src = FolderSource(path, image_size=8, allow_unknown_val_labels=True)
    assert "zebra (1)" in caplog.text
    assert src.num_examples("val") == 3
    np.testing.assert_array_equal(src.labels("val")[2], [0, 0, 1, 0, 0, 0])


def _bad_dataset(tmp_path):
    _write_images(tmp_path)
    (tmp_path / "img" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    whole = (tmp_path / "img" / "red.jpg").read_bytes()
    (tmp_path / "img" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "img" / "notes.png").write_text("plain text")
    train = [
        *GOOD_TRAIN,  # lines 2-6
        "img/missing.jpg,red",  # 7
        "img/corrupt.jpg,red",  # 8
        "",  # 9: empty row
        "img/red.jpg,red,extra",  # 10: malformed
        ",red",  # 11: empty image path
        "img/truncated.jpg,green",  # 12
        "img/notes.png,grey",  # 13
    ]
    val = [*GOOD_VAL, "img/missing.jpg,red", "img/red.jpg,zebra"]  # val lines 4, 5
    (tmp_path / "train.csv").write_text("image,labels\n" + "\n".join(train) + "\n")
    (tmp_path / "val.csv").write_text("image,labels\n" + "\n".join(val) + "\n")
    return str(tmp_path)


def test_every_problem_is_reported_with_file_and_line(tmp_path):
    path = _bad_dataset(tmp_path)
    with pytest.raises(FolderDataError) as info:
        FolderSource(path, image_size=8)
    problems = info.value.problems
    assert [p.split(": ", 1)[0] for p in problems] == [
        "train.csv:7",
        "train.csv:8",
        "train.csv:9",
        "train.csv:10",
        "train.csv:11",
        "train.csv:12",
        "train.csv:13",
        "val.csv:4",
        "val.csv:5",
    ]
    text = str(info.value)
    assert "9 problem(s)" in text and "data.skip_bad_rows=True" in text
    assert "train.csv:7: image img/missing.jpg" in text and "not found" in text
    assert "train.csv:8: image img/corrupt.jpg" in text and "cannot read the image" in text
    assert "train.csv:9: empty row" in text
    assert "train.csv:10: expected 2 fields (image,labels), got 3" in text
    assert "train.csv:11: the image path is empty" in text
    assert "train.csv:12: image img/truncated.jpg" in text
    assert "val.csv:5: unknown class(es) ['zebra']" in text


def test_skip_bad_rows(tmp_path, caplog):
    path = _bad_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="asl_jax.data.folder"):
        src = FolderSource(path, image_size=8, skip_bad_rows=True)
    assert src.skipped == {"train": 7, "val": 2}
    assert len(src.problems) == 9
    assert src.num_examples("train") == 5 and src.num_examples("val") == 2
    assert "skipped 9 bad rows (train 7, val 2)" in caplog.text
    batch = next(
        src.batches(BatchRequest("train", batch_size=5, seed=0, shuffle=True, drop_remainder=True))
    )
    assert batch["mask"].all()


def test_bad_header_is_fatal(tmp_path):
    path = _dataset(tmp_path, GOOD_TRAIN, GOOD_VAL)
    (tmp_path / "val.csv").write_text("file,tags\nimg/red.jpg,red\n")
    with pytest.raises(FolderDataError, match=r"val\.csv:1: the header must be 'image,labels'"):
        FolderSource(path, image_size=8, skip_bad_rows=True)


def test_all_rows_bad_after_skipping(tmp_path):
    path = _dataset(tmp_path, GOOD_TRAIN, ["img/missing.png,red"])
    with pytest.raises(FolderDataError, match=r"val\.csv has no usable rows \(1 skipped\)"):
        FolderSource(path, image_size=8, skip_bad_rows=True)


def test_quoted_labels_and_absolute_paths(tmp_path):
    rows = [*GOOD_TRAIN, f'{tmp_path / "img" / "green.png"},"green"']
    src = FolderSource(_dataset(tmp_path, rows, GOOD_VAL), image_size=8)
    assert src.num_examples("train") == 6
    np.testing.assert_array_equal(src.labels("train")[5], src.labels("train")[1])


def _small_folder_run_config(path):
    """The folder config (batch_size 64) made tiny: a 4-channel CNN at 16 px, 4 steps."""
    from train.configs.folder import get_config

    config = get_config()
    config.data.path = path
    config.data.image_size = 16
    config.model.name = "cnn"
    config.model.width = 4
    config.num_steps = 4
    config.log_every = 1
    config.progress_bar = False
    return config


def test_a_folder_smaller_than_the_batch_trains_with_a_fitted_batch(tmp_path, capsys):
    import json

    from asl_jax.training.loop import train_and_evaluate

    path = _dataset(tmp_path, GOOD_TRAIN * 2, GOOD_VAL)  # 10 training rows < batch_size 64
    config = _small_folder_run_config(path)
    workdir = tmp_path / "run"
    first = train_and_evaluate(config, workdir, stop_at_step=2, handle_signals=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    # 8 simulated devices: the largest multiple of 8 that fits 10 examples.
    assert warnings == [
        "warning: batch_size=64 is larger than the train split of 'folder' (10 examples); "
        "training with batch_size=8 (the largest multiple of the 8 device(s) that fits; "
        "recorded in config.json)."
    ]
    assert first.interrupted == 0 and config.batch_size == 64  # the caller's config is as given
    assert json.loads((workdir / "config.json").read_text())["batch_size"] == 8
    # The same command resumes (the fitted value is chosen again, so the configs agree).
    second = train_and_evaluate(config, workdir, handle_signals=False)
    assert second.summary["status"] == "completed" and second.summary["step"] == 4
    assert json.loads((workdir / "config.json").read_text())["batch_size"] == 8
    # eval_every=-1 (auto) on a 4-step run: an evaluation after every step.
    assert [r["step"] for r in second.records if r["kind"] == "eval"] == [1, 2, 3, 4]


def test_a_folder_with_fewer_images_than_devices_is_refused(tmp_path):
    from asl_jax.training.config import ConfigError
    from asl_jax.training.loop import train_and_evaluate

    config = _small_folder_run_config(_dataset(tmp_path, GOOD_TRAIN, GOOD_VAL))  # 5 < 8 devices
    with pytest.raises(ConfigError, match=r"5 example\(s\), fewer than the 8 devices"):
        train_and_evaluate(config, tmp_path / "run", handle_signals=False)


# Partial labels: a negatives column; a class in neither column is unknown (-1).
PARTIAL_TRAIN = [
    "img/red.jpg,red warm,green",  # grey, blue, cold unknown
    "img/green.png,green,red warm grey blue cold",  # fully labelled
    "img/grey.png,grey,",  # nothing known to be absent: every other class unknown
    "img/clear.png,,red green grey blue warm cold",  # fully labelled, no positive
    "img/blue_palette.png,blue cold,red",
]
PARTIAL_VAL = ["img/grey.jpg,grey,red green", "img/red.jpg,warm red,blue"]


def _partial_dataset(root, repeat=1):
    path = _dataset(root, [], [])
    (root / "train.csv").write_text(
        "image,labels,negatives\n" + "".join(r + "\n" for r in PARTIAL_TRAIN * repeat)
    )
    (root / "val.csv").write_text(
        "image,labels,negatives\n" + "".join(r + "\n" for r in PARTIAL_VAL)
    )
    return path


def test_a_negatives_column_makes_unlisted_classes_unknown(tmp_path):
    src = FolderSource(_partial_dataset(tmp_path), image_size=8)
    assert src.class_names == ("blue", "cold", "green", "grey", "red", "warm")
    expected = np.array(
        [
            [-1, -1, 0, -1, 1, 1],
            [0, 0, 1, 0, 0, 0],
            [-1, -1, -1, 1, -1, -1],
            [0, 0, 0, 0, 0, 0],
            [1, 1, -1, -1, 0, -1],
        ],
        np.float32,
    )
    np.testing.assert_array_equal(src.labels("train"), expected)
    np.testing.assert_array_equal(src.labels("val"), [[-1, -1, 0, 1, 0, -1], [0, -1, -1, -1, 1, 1]])


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("img/red.jpg,red,red green", r"train\.csv:2: class\(es\) \['red'\] listed both"),
        ("img/red.jpg,red,purple", r"train\.csv:2: unknown class\(es\) \['purple'\]"),
        ("img/red.jpg,red", r"train\.csv:2: expected 3 fields \(image,labels,negatives\), got 2"),
    ],
)
def test_bad_negatives(tmp_path, row, match):
    path = _dataset(tmp_path, [], GOOD_VAL, classes=["red", "green", "grey", "warm"])
    (tmp_path / "train.csv").write_text(f"image,labels,negatives\n{row}\n")
    with pytest.raises(FolderDataError) as info:
        FolderSource(path, image_size=8)
    assert any(re.search(match, p) for p in info.value.problems), info.value.problems


def test_unknown_labels_get_exactly_zero_gradient_and_are_counted(tmp_path):
    import jax
    import jax.numpy as jnp

    from asl_jax.losses import reduce_loss
    from asl_jax.training.loop import train_and_evaluate
    from asl_jax.training.loss_registry import LossConfig
    from asl_jax.training.step import elementwise_loss, known_labels

    path = _partial_dataset(tmp_path, repeat=2)  # 10 images: one per simulated device at least
    src = FolderSource(path, image_size=8)
    _, raw = src.gather("train", np.arange(10))
    targets, where = known_labels({"labels": jnp.asarray(raw)})
    logits = jax.random.normal(jax.random.key(0), raw.shape) * 3

    def loss(logits):
        # No margin: with m = 0.05 a known easy negative also gets zero gradient.
        value = elementwise_loss(logits, targets, LossConfig(clip=0.0), 4.0)
        return reduce_loss(value, "batchmean", where=where)

    grad = np.asarray(jax.grad(loss)(logits))
    assert np.all(grad[raw < 0] == 0.0)
    assert np.all(grad[raw >= 0] != 0.0)

    # Through training: the run counts the unknown entries and trains on the known ones.
    config = _small_folder_run_config(path)
    config.num_steps = 2
    result = train_and_evaluate(config, tmp_path / "run", handle_signals=False)
    assert result.summary["unknown_labels"] == {
        "train": int((raw < 0).sum()),
        "val": int((src.labels("val") < 0).sum()),
    }
    assert result.summary["status"] == "completed" and result.summary["num_skipped"] == 0


def test_images_listed_twice_with_other_labels_or_in_both_splits_are_warned(tmp_path, caplog):
    train = [*GOOD_TRAIN, "img/green.png,green", "img/grey.png,red", "./img/grey.png,grey"]
    path = _dataset(tmp_path, train, ["img/grey.jpg,grey", "img/red.jpg,warm"])
    with caplog.at_level(logging.WARNING, logger="asl_jax.data.folder"):
        src = FolderSource(path, image_size=8)
    assert src.num_examples("train") == 8  # every row used as written
    conflict, shared = src.duplicates
    assert conflict == (
        "train.csv lists 1 image(s) again with other labels: img/grey.png (lines 4 and 8); each "
        "row is used as written"
    )  # green.png twice with the same labels: allowed without a word; ./img/grey.png = line 4
    assert shared.startswith("1 image(s) are in both train.csv and val.csv: img/red.jpg;")
    assert conflict in caplog.text and shared in caplog.text

    caplog.clear()
    (tmp_path / "clean").mkdir()
    path = _dataset(tmp_path / "clean", [*GOOD_TRAIN, "img/green.png,green"], ["img/grey.jpg,grey"])
    with caplog.at_level(logging.WARNING, logger="asl_jax.data.folder"):
        assert FolderSource(path, image_size=8).duplicates == []
    assert caplog.text == ""


def _photo(width=96, height=64) -> Image.Image:
    """Photo-like: smooth colour fields and a little noise."""
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([np.sin(x / (5 + 2 * c)) * np.cos(y / (7 + c)) for c in range(3)], -1)
    noise = np.random.default_rng(0).normal(0, 4, (height, width, 3))
    return Image.fromarray(np.clip(smooth * 90 + 128 + noise, 0, 255).astype(np.uint8))


def test_jpegs_decode_through_libjpeg_turbo_as_through_pillow(tmp_path):
    pytest.importorskip("simplejpeg")
    from asl_jax.data.folder import decode_jpeg_scaled, load_image_with_pillow

    _write_images(tmp_path)
    path = tmp_path / "photo.jpg"
    _photo().save(path, quality=90)
    decoded = decode_jpeg_scaled(path.read_bytes(), 24)
    # libjpeg-turbo scales by eighths: 3/8 is the smallest scale whose sides are >= 24.
    assert decoded is not None and decoded.shape == (24, 36, 3)
    for name in ("photo.jpg", "img/red.jpg", "img/grey.jpg"):
        turbo = load_image(str(tmp_path / name), 24).astype(int)
        pillow = load_image_with_pillow(str(tmp_path / name), 24).astype(int)
        assert np.abs(turbo - pillow).mean() < 2.0, name  # of 255 levels
    assert decode_jpeg_scaled((tmp_path / "img" / "green.png").read_bytes(), 8) is None


def test_without_simplejpeg_pillow_decodes_every_image(tmp_path, monkeypatch):
    from asl_jax.data import folder

    monkeypatch.setattr(folder, "_simplejpeg", lambda: None)
    _write_images(tmp_path)
    assert folder.decode_jpeg_scaled((tmp_path / "img" / "red.jpg").read_bytes(), 8) is None
    red = load_image(str(tmp_path / "img" / "red.jpg"), 8)
    assert np.array_equal(red, folder.load_image_with_pillow(str(tmp_path / "img" / "red.jpg"), 8))


@pytest.mark.parametrize("orientation", [1, 6])
def test_exif_orientation_is_read_and_rotated_jpegs_are_turned(tmp_path, orientation):
    from asl_jax.data.folder import jpeg_orientation, load_image_with_pillow

    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "turned.jpg"
    _photo().save(path, quality=90, exif=exif)
    assert jpeg_orientation(path.read_bytes()) == orientation
    image = load_image(str(path), 16)
    assert np.array_equal(image, load_image_with_pillow(str(path), 16)) or orientation == 1
    # Orientation 6 (turned 90°): the top-left pixel comes from the bottom-left of the file.
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
    upright = stored if orientation == 1 else np.rot90(stored, -1)
    assert np.abs(image.astype(int) - upright).mean() < 4


def test_cmyk_and_malformed_jpegs(tmp_path):
    from asl_jax.data.folder import jpeg_orientation

    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path)
    assert np.abs(load_image(str(path), 8).astype(int) - RED).max() < 8
    assert jpeg_orientation(b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM\x00") == 1  # truncated
    truncated = tmp_path / "truncated.jpg"
    _photo().save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(OSError):
        load_image(str(truncated), 8)
