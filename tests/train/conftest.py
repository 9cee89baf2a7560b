"""A tiny ``python -m train.compare`` run shared by the compare, evaluate and predict tests.

Compiling a train step takes seconds on a small CPU, so one comparison (a BCE run
that trains, an adaptive-ASL run configured to fail) is made once per session; its BCE workdir is
the trained run that ``train.evaluate`` and ``train.predict`` are tested on.
"""

import dataclasses
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 300  # seconds; generous for a loaded machine with few cores

#: 8 steps on 256 images of 16 px, a width-8 CNN; evaluations and checkpoints at steps 4 and 8.
TINY = {
    "model.width": 8,
    "data.image_size": 16,
    "data.num_train": 256,
    "data.num_val": 64,
    "batch_size": 32,
    "num_steps": 8,
    "log_every": 2,
    "eval_every": 4,
    "checkpoint_every": 4,
    "progress_bar": False,
}
#: The adaptive run's start γ− (4) is outside [0, 1]: that run fails validation, the others run.
FAILING = {"loss.adaptive_max_gamma_neg": 1.0}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Where a test module's subprocesses find the shapes data its first run generated."""
    return tmp_path_factory.mktemp("shapes")


def env(num_devices: int = 1) -> dict[str, str]:
    out = dict(os.environ)
    out.pop("XLA_FLAGS", None)
    out.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(num_devices), PYTHONUNBUFFERED="1")
    return out


def run_module(module: str, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """``python -m module args`` in the repository, on one CPU device."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def set_fields(config, overrides):
    """``config`` with the dotted fields of ``overrides`` set (type-checked by ml_collections)."""
    config.update_from_flattened_dict(dict(overrides))
    return config


@dataclasses.dataclass
class Comparison:
    workdir: str  # of train.compare
    run: str  # its BCE workdir: a trained run
    cache_dir: str
    flags: list[str]  # the --config.* flags used
    proc: subprocess.CompletedProcess

    @staticmethod
    def cli(module: str, *args: str) -> subprocess.CompletedProcess:
        """``python -m module args`` on one CPU device."""
        return run_module(module, *args)

    def config(self, **extra):
        """The tiny config (without the failing override) as an unlocked ConfigDict."""
        from train.configs.default import get_config

        return set_fields(get_config(), {**TINY, "data.cache_dir": self.cache_dir, **extra})


@pytest.fixture(scope="session")
def comparison(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    cache_dir = str(root / "shapes")
    workdir = str(root / "runs")
    overrides = {**TINY, **FAILING, "data.cache_dir": cache_dir}
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    proc = run_module("train.compare", *flags, "--losses=bce,asl_adaptive", f"--workdir={workdir}")
    assert os.path.isfile(os.path.join(workdir, "bce", "summary.json")), proc.stderr[-3000:]
    return Comparison(workdir, os.path.join(workdir, "bce"), cache_dir, flags, proc)


@pytest.fixture(scope="session")
def images(comparison, tmp_path_factory):
    """Three validation images as PNG files in a directory (with a non-image file), for the
    tests of train.predict."""
    from PIL import Image

    from asl_jax.data import create_source

    directory = tmp_path_factory.mktemp("images")
    source = create_source(comparison.config().data, seed=0)
    val_images, _ = source.arrays("val")
    for i in range(3):
        Image.fromarray(val_images[i]).save(directory / f"val{i}.png")
    (directory / "notes.txt").write_text("not an image")
    return directory
