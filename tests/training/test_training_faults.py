"""Faults a run meets: a save that fails (read-only or full disk), a lost or damaged config.json,
a diverged model.

The runs use the tiny config of the loop tests (10 steps), so they share its compiled programs.
Each fault is made in a way that works everywhere (a patched free space, an Orbax directory
creation that fails); the read-only bind mount and the full tmpfs of a real disk need root and
mount permission, and are skipped without them.
"""

import contextlib
import errno
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
from test_training_loop import OVERRIDES, tiny_config

from asl_jax.training import checkpoint
from asl_jax.training.checkpoint import Checkpointer, CheckpointSaveError
from asl_jax.training.loop import NonFiniteError, train_and_evaluate
from asl_jax.training.workdir import WorkdirConfigError
from train.evaluate import evaluate_workdir
from train.reopen import RunError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def _orbax_threads():
    from orbax.checkpoint._src.futures import future

    return [t for t in threading.enumerate() if isinstance(t, future._SignalingThread)]


def _assert_one_save_error(info, step, last):
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"the checkpoint of step {step} was not saved (")
    assert f"the last checkpoint on disk is {last} (step {os.path.basename(last)})" in message
    assert "rerun of the same command resumes from once" in message


# -- items 1 and 2: a save that fails ends the run at once, in one line, no thread behind --------


def test_too_little_free_space_stops_before_the_save_and_keeps_the_last_checkpoint(
    cache_dir, tmp_path, monkeypatch, capsys
):
    real = checkpoint.shutil.disk_usage

    def full(path):
        return real(path)._replace(free=100)  # less than any checkpoint

    monkeypatch.setattr(checkpoint.shutil, "disk_usage", full)
    with pytest.raises(CheckpointSaveError) as info:
        train_and_evaluate(tiny_config(cache_dir), tmp_path, handle_signals=False)
    # Step 4 saved (no earlier checkpoint to size it by); step 5 (a new best) was refused.
    _assert_one_save_error(info, 5, f"{tmp_path}/checkpoints/4")
    assert "No space left on device" in str(info.value)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]
    assert not _orbax_threads()
    # progress_bar=False: the evaluation's line is printed all the same.
    assert "step 5: mAP " in capsys.readouterr().err

    monkeypatch.undo()  # space again: the rerun resumes from step 4
    result = train_and_evaluate(tiny_config(cache_dir), tmp_path, handle_signals=False)
    assert result.summary["step"] == 10


@pytest.mark.parametrize("async_save", [True, False], ids=["async", "sync"])
def test_a_save_that_fails_inside_orbax_ends_the_run_and_its_threads(
    cache_dir, tmp_path, monkeypatch, caplog, async_save
):
    """The check before a save is passed, then Orbax cannot create the save's directory (what a
    read-only disk does): its writer threads, which used to wait for minutes, end."""
    from orbax.checkpoint._src.path import async_path

    real_mkdir = async_path.mkdir

    async def read_only(path, *args, **kwargs):
        if os.path.basename(str(path)).startswith("8.orbax-checkpoint-tmp"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return await real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(async_path, "mkdir", read_only)
    monkeypatch.setattr(Checkpointer, "_check_can_save", lambda self, step: None)
    config = tiny_config(cache_dir)
    config.async_checkpoints = async_save
    start = time.monotonic()
    with pytest.raises(CheckpointSaveError) as info:
        train_and_evaluate(config, tmp_path, handle_signals=False)
    assert time.monotonic() - start < 120
    _assert_one_save_error(info, 8, f"{tmp_path}/checkpoints/5")
    assert "Read-only file system" in str(info.value)
    assert not _orbax_threads()
    assert not [r for r in caplog.records if r.exc_info]  # Orbax's tracebacks are not logged


@contextlib.contextmanager
def _mounted(kind, path):
    """A read-only bind mount of ``path`` onto itself, or a 1 MB tmpfs; skips without mount."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("needs root on Linux to mount")
    os.makedirs(path, exist_ok=True)
    if kind == "read-only":
        commands = [
            ["mount", "--bind", path, path],
            ["mount", "-o", "remount,ro,bind", path],
        ]
    else:
        commands = [["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", path]]
    for i, command in enumerate(commands):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            if i:
                subprocess.run(["umount", path])
            pytest.skip(f"mounting is not permitted here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=True)


def test_a_full_tmpfs_refuses_the_save_that_does_not_fit(cache_dir, tmp_path):
    with _mounted("tmpfs", str(tmp_path / "disk")) as disk:
        workdir = os.path.join(disk, "run")
        config = tiny_config(cache_dir)
        config.tensorboard = False
        train_and_evaluate(config, workdir, stop_at_step=4, handle_signals=False)
        with open(os.path.join(disk, "filler"), "wb") as f:  # leave less than a checkpoint free
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            f.write(b"\0" * max(free - 8192, 0))
        with pytest.raises(CheckpointSaveError) as info:
            train_and_evaluate(config, workdir, handle_signals=False)
        _assert_one_save_error(info, 5, f"{workdir}/checkpoints/4")
        assert not _orbax_threads()


def _cli_overrides(cache_dir):
    return [f"--config.{k}={v}" for k, v in {**OVERRIDES, "data.cache_dir": cache_dir}.items()]


@pytest.mark.parametrize("fault", ["patched", "read-only mount"])
def test_python_m_train_with_a_save_that_fails_exits_1_with_one_line(cache_dir, tmp_path, fault):
    """The process ends (no Orbax thread keeps it alive) with one line and exit status 1."""
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
    env.pop("XLA_FLAGS", None)
    args = [*_cli_overrides(str(cache_dir)), f"--workdir={workdir}"]
    if fault == "patched":  # Orbax cannot create any save's directory
        code = (
            "import errno, os, runpy, sys\n"
            "from orbax.checkpoint._src.path import async_path\n"
            "async def fail(path, *a, **k):\n"
            "    raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))\n"
            "async_path.mkdir = fail\n"
            "from asl_jax.training.checkpoint import Checkpointer\n"
            "Checkpointer._check_can_save = lambda self, step: None\n"
            "sys.argv = ['train', *sys.argv[1:]]\n"
            "runpy.run_module('train', run_name='__main__', alter_sys=True)\n"
        )
        command = [sys.executable, "-c", code, *args]
        mount = contextlib.nullcontext()
    else:
        command = [sys.executable, "-m", "train", *args]
        mount = _mounted("read-only", str(workdir / "checkpoints"))
    with mount:
        start = time.monotonic()
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240
        )
        elapsed = time.monotonic() - start
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith("error: the checkpoint of step 4 was not saved (")
    assert "no checkpoint is on disk yet" in errors[0]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert elapsed < 200


# -- item 4: the config is stored with each checkpoint ----------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    workdir = tmp_path_factory.mktemp("trained")
    train_and_evaluate(tiny_config(cache_dir), workdir, stop_at_step=6, handle_signals=False)
    return workdir


def _copy(trained, tmp_path):
    import shutil

    workdir = tmp_path / f"run-{uuid.uuid4().hex[:6]}"
    shutil.copytree(trained, workdir)
    return workdir


def test_the_config_is_stored_with_the_checkpoint(trained):
    ckpt = Checkpointer(trained / "checkpoints")
    try:
        stored = ckpt.config(ckpt.latest_step())
    finally:
        ckpt.close()
    assert stored == json.loads((trained / "config.json").read_text())


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_a_lost_config_json_refuses_another_config(cache_dir, trained, tmp_path, damage):
    workdir = _copy(trained, tmp_path)
    if damage == "deleted":
        (workdir / "config.json").unlink()
    else:
        (workdir / "config.json").write_text("{not json\x00")
    config = tiny_config(cache_dir)
    config.learning_rate = 0.02
    with pytest.raises(WorkdirConfigError, match=r"learning_rate: 0\.01 -> 0\.02"):
        train_and_evaluate(config, workdir, handle_signals=False)


def test_a_lost_config_json_is_rebuilt_and_the_run_resumes(cache_dir, trained, tmp_path, capsys):
    workdir = _copy(trained, tmp_path)
    (workdir / "config.json").write_text("garbage")
    result = train_and_evaluate(tiny_config(cache_dir), workdir, handle_signals=False)
    assert result.summary["step"] == 10
    assert "config.json cannot be read" in capsys.readouterr().err
    assert json.loads((workdir / "config.json").read_text())["learning_rate"] == 0.01


def test_checkpoints_without_a_stored_config(cache_dir, trained, tmp_path, monkeypatch):
    """Checkpoints of before the config was stored: config.json decides, and without it the run
    is refused (in one line, not a JSONDecodeError)."""
    monkeypatch.setattr(Checkpointer, "config", lambda self, step: None)
    workdir = _copy(trained, tmp_path)
    (workdir / "config.json").write_text("garbage")
    with pytest.raises(WorkdirConfigError, match=r"config\.json cannot be read") as info:
        train_and_evaluate(tiny_config(cache_dir), workdir, handle_signals=False)
    assert "\n" not in str(info.value)
    with pytest.raises(RunError, match=r"no checkpoint .* stores the run's config"):
        evaluate_workdir(workdir, output="")

    workdir = _copy(trained, tmp_path)  # config.json intact: resumes
    result = train_and_evaluate(tiny_config(cache_dir), workdir, handle_signals=False)
    assert result.summary["step"] == 10


def test_train_evaluate_reads_the_stored_config_when_config_json_is_garbage(
    trained, tmp_path, capsys
):
    workdir = _copy(trained, tmp_path)
    (workdir / "config.json").write_text("[1, 2")
    result = evaluate_workdir(workdir, output="")
    assert result["step"] == 6 and result["map"] is not None
    assert "using the config stored with the checkpoint of step 6" in capsys.readouterr().err


# -- item 5: a diverged model is a result, and no diverged checkpoint is called good -----------


@pytest.mark.parametrize("learning_rate", [1e20, 1e30])
def test_a_diverged_model_is_recorded_and_stops_the_run(cache_dir, tmp_path, learning_rate):
    config = tiny_config(cache_dir)
    config.learning_rate = learning_rate
    config.checkpoint_every = 2
    with pytest.raises(NonFiniteError) as info:
        train_and_evaluate(config, tmp_path, handle_signals=False)
    message = str(info.value)
    assert message.startswith("training stopped at step 5: the evaluation found non-finite")
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    last = records[-1]
    assert last["kind"] == "eval" and last["step"] == 5
    assert last["map"] is None and last["nonfinite_probs"] > 0
    # The checkpoint the message calls good evaluates to finite scores, or there is none.
    steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    if "the last good checkpoint is" in message:
        good = int(message.split("(step ")[1].split(")")[0])
        assert evaluate_workdir(tmp_path, step=good, output="")["map"] is not None
    else:
        assert "no checkpoint of this run gives finite probabilities" in message
        for step in steps:  # train.evaluate answers in one line, not "scores must be finite"
            with pytest.raises(RunError, match="non-finite probabilities on the val split"):
                evaluate_workdir(tmp_path, step=step, output="")
