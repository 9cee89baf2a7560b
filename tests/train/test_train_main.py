"""End-to-end tests of ``python -m train``: SIGTERM + resume, two processes, config errors.

Each CLI run is a subprocess with its own simulated CPU devices (``JAX_NUM_CPU_DEVICES``). The
reference is the same tiny run trained in this process on the suite's 8 devices: the interrupted
and resumed CLI run must end with exactly its state, the two-process run (4 + 4 devices through
``jax.distributed`` and gloo on 127.0.0.1) with its state up to float summation order.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from asl_jax.training.checkpoint import Checkpointer
from asl_jax.training.loop import train_and_evaluate
from asl_jax.training.state import checkpoint_items
from train.configs.default import get_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 240  # seconds; generous for a loaded machine with few cores

OVERRIDES = {
    "model.width": 4,
    "data.image_size": 16,
    "data.num_train": 64,
    "data.num_val": 32,
    "batch_size": 16,
    "num_steps": 10,
    "learning_rate": 0.01,
    "loss.adaptive": True,
    "log_every": 1,
    "eval_every": 5,
    "checkpoint_every": 4,
    "progress_bar": False,
}


def _overrides(cache_dir):
    return {**OVERRIDES, "data.cache_dir": str(cache_dir)}


def _config(cache_dir):
    config = get_config()
    for dotted, value in _overrides(cache_dir).items():
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def _command(cache_dir, workdir, *extra):
    flags = [f"--config.{k}={v}" for k, v in _overrides(cache_dir).items()]
    return [sys.executable, "-m", "train", *flags, f"--workdir={workdir}", *extra]


def _env(num_devices, compilation_cache=None):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(num_devices), PYTHONUNBUFFERED="1")
    if compilation_cache:
        # The resumed run loads the programs the interrupted one compiled.
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(compilation_cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        )
    return env


def _start(command, num_devices, log_path, compilation_cache=None):
    log = open(log_path, "w")
    env = _env(num_devices, compilation_cache)
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def _wait(proc, log_path, timeout=TIMEOUT):
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"timed out after {timeout} s:\n{open(log_path).read()[-3000:]}")
    return open(log_path).read()


def _kill(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _final_arrays(workdir, like):
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        return jax.device_get(checkpoint_items(ckpt.restore(like)))
    finally:
        ckpt.close()


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
    # Also generates the cached dataset that every subprocess then reads.
    workdir = tmp_path_factory.mktemp("reference")
    return train_and_evaluate(_config(cache_dir), workdir, handle_signals=False)


@pytest.mark.slow  # the two-process preemption test checks the same on each of two hosts
def test_sigterm_saves_a_checkpoint_and_the_rerun_ends_like_an_uninterrupted_run(
    reference, cache_dir, tmp_path
):
    workdir, log_path, xla_cache = tmp_path / "run", tmp_path / "first.log", tmp_path / "xla"
    proc = _start(_command(cache_dir, workdir), 8, log_path, xla_cache)
    try:
        # The banner is printed just before the first step is compiled (seconds): a SIGTERM sent
        # now arrives mid-run and the loop stops after one of the first steps.
        deadline = time.time() + TIMEOUT
        while "Training cnn on shapes" not in open(log_path).read():
            assert proc.poll() is None, open(log_path).read()[-3000:]
            assert time.time() < deadline, "the run did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output = _wait(proc, log_path)
    finally:
        _kill([proc])
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "Received SIGTERM" in output and "Rerun the same command to resume" in output
    summary = json.load(open(workdir / "summary.json"))
    stopped = summary["step"]
    print(f"SIGTERM stopped the run at step {stopped}")
    assert summary["status"] == "interrupted" and 1 <= stopped < 10
    assert str(stopped) in os.listdir(workdir / "checkpoints")
    assert max(r["step"] for r in _records(workdir)) == stopped

    proc = _start(_command(cache_dir, workdir), 8, tmp_path / "second.log", xla_cache)
    try:
        output = _wait(proc, tmp_path / "second.log")
    finally:
        _kill([proc])
    assert proc.returncode == 0, output[-3000:]
    assert f"Resuming from step {stopped}" in output
    assert "Final mAP" in output and f"Results in {workdir}" in output
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        assert (workdir / name).is_file()
    assert len(os.listdir(workdir / "plots")) == 4
    final = _final_arrays(workdir, reference.state)
    expected = jax.device_get(checkpoint_items(reference.state))
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    ours = [(r["step"], r["kind"], r.get("loss"), r.get("map")) for r in _records(workdir)]
    theirs = [(r["step"], r["kind"], r.get("loss"), r.get("map")) for r in reference.records]
    assert ours == theirs


def test_two_processes_with_four_devices_each_match_one_process_with_eight(
    reference, cache_dir, tmp_path
):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path / "run"
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    procs = []
    try:
        for i in range(2):
            distributed = (
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            )
            procs.append(_start(_command(cache_dir, workdir, *distributed), 4, logs[i]))
        outputs = [_wait(p, log) for p, log in zip(procs, logs, strict=True)]
    finally:
        _kill(procs)
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]
    assert "Final mAP" in outputs[0] and "Final mAP" not in outputs[1]  # process 0 reports
    assert "2 process(es)" in outputs[0]
    final = _final_arrays(workdir, reference.state)
    expected = jax.device_get(checkpoint_items(reference.state))
    diffs = [
        float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0))
        for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(expected), strict=True)
    ]
    ours, theirs = _records(workdir), reference.records
    assert [(r["step"], r["kind"]) for r in ours] == [(r["step"], r["kind"]) for r in theirs]
    train = [(a, b) for a, b in zip(ours, theirs, strict=True) if a["kind"] == "train"]
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in train)
    gamma_diff = max(abs(a["gamma_neg"] - b["gamma_neg"]) for a, b in train)
    print(f"2 processes vs 1: state {max(diffs):.2e}, loss {loss_diff:.2e}, γ− {gamma_diff:.2e}")
    assert max(diffs) < 1e-4 and loss_diff < 1e-5 and gamma_diff < 1e-5


def test_invalid_config_fails_before_training_with_the_field_named(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "train", "--config.loss.name=nope", f"--workdir={tmp_path}"],
        cwd=REPO,
        env=_env(1),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert run.returncode == 1
    assert "loss.name='nope': expected one of bce, focal, asl" in run.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize(
    "module, args, expected",
    [
        # The config flag reads the overrides when it is defined (default config) ...
        (
            "train",
            ["--config.data.img_size=64"],
            "unknown config key data.img_size; did you mean data.image_size?",
        ),
        # ... or when absl parses --config (config file given).
        (
            "train",
            ["--config=train/configs/default.py", "--config.loss.gama_neg=1"],
            "unknown config key loss.gama_neg; did you mean loss.gamma_neg?",
        ),
        (
            "train.compare",
            ["--config.modle.width=3"],
            "unknown config key modle.width; did you mean model.width?",
        ),
        (
            "train",
            ["--config.lr=1"],
            "unknown config key lr; the keys of config are async_checkpoints, augment, ",
        ),
        ("train", ["--config=nope.py"], "--config=nope.py: no such file"),
        (
            "train",
            ["--config.num_epochs=abc"],
            "flag --config.num_epochs=abc: invalid literal for int()",
        ),
        ("train", ["--wrokdir=x"], "unknown flag --wrokdir; did you mean --workdir?"),
        ("train", ["extra"], "unexpected arguments: extra"),
        ("train.compare", ["--lossses=bce"], "unknown flag --lossses; did you mean --losses?"),
        (
            "train.evaluate",
            ["--workdir=x", "--stepp=3"],
            "unknown flag --stepp; did you mean --step?",
        ),
        (
            "train.evaluate",
            ["--workdir=x", "--zzz"],
            "unknown flag --zzz; the flags of this command are --best, --ema, --output, ",
        ),
        ("train.evaluate", [], "--workdir is required: the workdir of a training run"),
        ("train.predict", ["--workdir=x", "--jsn"], "unknown flag --jsn; did you mean --json?"),
        (
            "train.sweep",
            ["--grid=loss.clip=0,0.1", "--config.loss.gama_neg=1"],
            "unknown config key loss.gama_neg; did you mean loss.gamma_neg?",
        ),
        ("train.sweep", ["--gird=loss.clip=0"], "unknown flag --gird; did you mean --grid?"),
    ],
)
def test_a_bad_command_line_gets_one_line_and_exit_status_2(module, args, expected, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=_env(1),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"error: {expected}")
    assert run.stderr.count("\n") == 1 and run.stderr.endswith("\n")
    assert "Traceback" not in run.stderr and run.stdout == ""
