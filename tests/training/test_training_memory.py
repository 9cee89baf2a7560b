"""Tests of the early memory check: an absurd image or batch size is refused before any work."""

import pytest
from test_training_loop import tiny_config

from asl_jax.training.config import ConfigError, validate_config
from asl_jax.training.loop import train_and_evaluate
from asl_jax.training.memory import (
    Available,
    available_memory,
    batch_bytes,
    check_batch_memory,
    check_dataset_memory,
    host_available_bytes,
)
from train.configs.default import get_config

GIB = 2**30
CPU_HOST = Available(per_device=None, host=4 * GIB, where="host RAM")  # 8 CPU devices share it
GPU = Available(per_device=2 * GIB, host=64 * GIB, where="GPU memory")


def _config(**fields):
    """The default config with ``block__field=value`` keywords set (``__`` for the dot)."""
    config = get_config()
    config.update_from_flattened_dict({k.replace("__", "."): v for k, v in fields.items()})
    return validate_config(config)


@pytest.mark.parametrize(
    ("fields", "available", "message"),
    [
        # 64 images of 1024² × 3 float32 = 768 MiB over 8 CPU devices sharing 4 GiB: fits.
        (dict(data__image_size=1024), CPU_HOST, None),
        # 512 images of 1024²: 6 GiB of float32 input on the host's devices.
        (
            dict(data__image_size=1024, batch_size=512),
            CPU_HOST,
            "batch_size=512 with data.image_size=1024: the input batch alone needs 6.0 GiB on "
            "the 8 device(s) of this host (64 images of 1024×1024×3 float32 per device, before "
            "any activation), more than the 4.0 GiB of host RAM available; lower batch_size or "
            "data.image_size",
        ),
        (
            dict(data__image_size=1024, eval_batch_size=1024),
            CPU_HOST,
            "eval_batch_size=1024 with data.image_size=1024: the input batch alone needs 12.0 GiB",
        ),
        # On a GPU each device holds only its share: 512 / 8 × 3 MiB × 4 = 768 MiB fits in 2 GiB.
        (dict(data__image_size=1024, batch_size=512), GPU, None),
        (
            dict(data__image_size=2048, batch_size=512),
            GPU,
            "batch_size=512 with data.image_size=2048: the input batch alone needs 3.0 GiB on "
            "each device (64 images of 2048×2048×3 float32 per device, before any activation), "
            "more than the 2.0 GiB of GPU memory available",
        ),
        # Unknown available memory: nothing is refused.
        (dict(data__image_size=100_000), Available(None, None, "host RAM"), None),
    ],
)
def test_check_batch_memory(fields, available, message):
    config = _config(**fields)
    check = lambda: check_batch_memory(  # noqa: E731
        config, num_devices=8, local_devices=8, available=available
    )
    if message is None:
        check()
        return
    with pytest.raises(ConfigError) as info:
        check()
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # The default 8192 + 2048 images of 32² × 3 uint8 (30 MiB) fit.
        (dict(), None),
        # 10240 images of 512² × 3 uint8 = 7.5 GiB.
        (
            dict(data__image_size=512),
            "data.image_size=512: the shapes dataset (10240 images of 512×512×3 uint8) needs "
            "7.5 GiB, more than the 4.0 GiB of host RAM available; lower data.image_size or "
            "data.num_train / data.num_val",
        ),
        # A TFDS dataset is read batch by batch: only its batches are checked.
        (dict(data__image_size=512, data__name="coco2017"), None),
    ],
)
def test_check_dataset_memory(fields, message):
    config = _config(**fields)
    if message is None:
        check_dataset_memory(config, available=CPU_HOST)
        return
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        check_dataset_memory(config, available=CPU_HOST)


def test_batch_bytes_rounds_the_share_of_a_device_up():
    assert batch_bytes(10, 16, 8) == 2 * 16 * 16 * 3 * 4


def test_this_host_reports_its_memory():
    host = host_available_bytes()
    assert host is not None and host > 0
    available = available_memory()
    assert available.host == pytest.approx(host, rel=0.5)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("data.image_size", 1_000_000, "data.image_size=1000000: the shapes dataset"),
        ("batch_size", 2**26, None),  # lowered to the 64 training images: fits, not refused
        ("eval_batch_size", 2**26, "eval_batch_size=67108864 with data.image_size=16"),
    ],
)
def test_an_absurd_size_is_refused_before_any_work(tmp_path, field, value, named):
    config = tiny_config(tmp_path / "cache")
    *parents, leaf = field.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[leaf] = value
    if named is None:  # one step shows it was not refused
        result = train_and_evaluate(config, tmp_path / "run", stop_at_step=1, handle_signals=False)
        assert result.summary["step"] == 1
        return
    with pytest.raises(ConfigError, match=named) as info:
        train_and_evaluate(config, tmp_path / "run", handle_signals=False)
    assert "available" in str(info.value)
    assert not (tmp_path / "run").exists()  # refused before the workdir was written
