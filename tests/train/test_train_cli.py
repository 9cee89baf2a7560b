"""Tests of train.cli: checking the command line before absl and ml_collections do."""

import pytest

from train.cli import (
    UsageError,
    check_config_flag,
    config_keys,
    config_overrides,
    did_you_mean,
)
from train.configs.default import get_config


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--config.data.img_size=64", "--workdir=w"], (None, ["data.img_size"])),
        (["train", "--config=c.py:x", "--noconfig.augment"], ("c.py:x", ["augment"])),
        (["train", "--config", "c.py", "-config.seed=1"], ("c.py", ["seed"])),
        (["train", "--", "--config.seed=1"], (None, [])),
        (["train", "--configs.seed=1", "--config_x=1"], (None, [])),
    ],
)
def test_config_overrides_are_read_from_the_command_line(argv, expected):
    assert config_overrides(argv) == expected


def test_config_keys_walk_the_config():
    config = get_config()
    keys = config_keys()
    assert {"data", "data.image_size", "loss.gamma_neg", "batch_size"} <= set(keys)
    # Every key resolves (_get), and every leaf of the config is listed.
    leaves = {k for k in keys if not isinstance(_get(config, k), type(config))}
    assert leaves == set(_leaves(config.to_dict()))


def _get(config, key):
    for part in key.split("."):
        config = config[part]
    return config


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.img_size", "unknown config key data.img_size; did you mean data.image_size?"),
        ("modle.width", "unknown config key modle.width; did you mean model.width?"),
        ("data.zzz", "unknown config key data.zzz; the keys of data are data."),
        (
            "zzz.a",
            "unknown config key zzz.a; the keys of config are async_checkpoints, augment, "
            "batch_size",
        ),
    ],
)
def test_an_unknown_config_key_names_the_closest_or_lists_the_group(override, message):
    with pytest.raises(UsageError) as e:
        check_config_flag(["train", "--config.seed=3", f"--config.{override}=1"])
    assert str(e.value).startswith(message)


def test_known_config_keys_and_a_missing_config_file():
    check_config_flag(["train", "--config.data.image_size=32", "--config.loss.gamma_neg=2"])
    with pytest.raises(UsageError, match=r"--config=nope\.py: no such file"):
        check_config_flag(["train", "--config=nope.py"])


def test_did_you_mean():
    assert did_you_mean("stepp", ["step", "best"], prefix="--") == "did you mean --step?"
    assert did_you_mean("zzz", ["step", "best"]) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train.compare", "--losses=bce,asll"), "error: --losses='bce,asll': expected a comma"),
        (("train.compare", "--seeds=0,x"), "error: --seeds='0,x': expected comma-separated"),
        (
            ("train.sweep", "--grid=loss.gamma_neg=1,2", "--seeds=1,1"),
            "error: --seeds='1,1': expected distinct",
        ),
        (("train.sweep", "--grid=seed"), "error: --grid='seed'"),
        (("train.evaluate",), "error: --workdir is required: the workdir of a training run\n"),
        (("train.predict", "x.jpg"), "error: --workdir is required: the workdir of a training"),
        (
            ("train.predict", "--workdir=runs/a", "--model=m.onnx", "x.jpg"),
            "error: --workdir is required: the workdir of a training run, or instead of it --model",
        ),
        (("train.export", "--output=m.pth"), "error: --workdir is required: the workdir of a"),
    ],
)
def test_unusable_command_lines_exit_2_with_one_line(args, message):
    from tests.train.conftest import run_module

    proc = run_module(*args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr


def test_a_closed_stdout_ends_a_command_quietly():
    """``train.evaluate ... | head -1``: no BrokenPipeError traceback, for every command (they
    all start with :func:`train.cli.run`)."""
    import subprocess
    import sys

    from tests.train.conftest import REPO, env

    script = (
        "from train import cli\n"
        "def main(argv):\n"
        "    for i in range(100000):\n"
        "        print(f'line {i}', flush=True)\n"
        "    return 0\n"
        "cli.run(main, lambda: None)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert stderr == ""


def test_library_warnings_are_warning_lines(capsys):
    """A folder dataset's skipped rows: ``warning: ...`` like every other warning, not absl's
    ``W1205 07:18:44.578162 ...`` format."""
    import logging

    from train.cli import warning_lines

    logger = logging.getLogger("asl_jax.data.folder")
    saved = logging.getLogger("asl_jax").handlers[:], logging.getLogger("asl_jax").propagate
    try:
        warning_lines()
        warning_lines()  # idempotent: one line per warning
        logger.warning("folder %s: skipped %d bad rows", "/data", 2)
    finally:
        logging.getLogger("asl_jax").handlers[:], logging.getLogger("asl_jax").propagate = saved
    assert capsys.readouterr().err == "warning: folder /data: skipped 2 bad rows\n"
