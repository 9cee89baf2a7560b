"""A SIGTERM to one process of a two-process run: both stop after the same step, save one
checkpoint together and exit with 143; the rerun resumes and ends like an uninterrupted run.

The processes (one CPU device each, ``jax.distributed`` on 127.0.0.1) use the harness of
``test_train_cli``. The uninterrupted reference is trained in this process on two of the suite's
devices: the same split of every batch over two devices, so the same numbers up to the rounding
of the collectives.
"""

import json
import os
import re
import signal
import socket
import time

import jax
import numpy as np
import pytest
from test_train_main import (
    TIMEOUT,
    _command,
    _config,
    _final_arrays,
    _kill,
    _records,
    _start,
    _wait,
)

from asl_jax.training import make_mesh
from asl_jax.training.loop import train_and_evaluate
from asl_jax.training.state import checkpoint_items


@pytest.fixture(scope="module")
def two_device_reference(tmp_path_factory, cache_dir):
    # Also generates the cached dataset that the subprocesses then read.
    workdir = tmp_path_factory.mktemp("reference")
    mesh = make_mesh(jax.devices()[:2])
    return train_and_evaluate(_config(cache_dir), workdir, mesh=mesh, handle_signals=False)


def _start_pair(cache_dir, workdir, logs, xla_cache):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for i, log in enumerate(logs):
        distributed = (
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        )
        procs.append(_start(_command(cache_dir, workdir, *distributed), 1, log, xla_cache))
    return procs


def _stopped_step(output):
    """The step after which a process said it stopped (None when it did not)."""
    found = re.findall(r"stopping after step (\d+) and saving a checkpoint", output)
    return int(found[-1]) if found else None


def test_sigterm_on_one_of_two_processes_stops_both_at_the_same_step(
    two_device_reference, cache_dir, tmp_path
):
    workdir, xla_cache = tmp_path / "run", tmp_path / "xla"
    logs = [tmp_path / f"first{i}.log" for i in range(2)]
    procs = _start_pair(cache_dir, workdir, logs, xla_cache)
    try:
        # Process 0 prints the banner just before the first step is compiled (seconds): the
        # SIGTERM to process 1 arrives mid-run.
        deadline = time.time() + TIMEOUT
        while "Training cnn on shapes" not in open(logs[0]).read():
            for proc, log in zip(procs, logs, strict=True):
                assert proc.poll() is None, open(log).read()[-3000:]
            assert time.time() < deadline, "the run did not start"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGTERM)
        outputs = [_wait(p, log) for p, log in zip(procs, logs, strict=True)]
    finally:
        _kill(procs)
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    steps = [_stopped_step(output) for output in outputs]
    print(f"SIGTERM to process 1 stopped both processes after steps {steps}")
    assert steps[0] is not None and steps[0] == steps[1] and 1 <= steps[0] < 10, outputs
    stopped = steps[0]
    assert "Rerun the same command to resume" in outputs[0]
    summary = json.load(open(workdir / "summary.json"))
    assert summary["status"] == "interrupted" and summary["step"] == stopped
    assert str(stopped) in os.listdir(workdir / "checkpoints")
    assert max(r["step"] for r in _records(workdir)) == stopped

    logs = [tmp_path / f"second{i}.log" for i in range(2)]
    procs = _start_pair(cache_dir, workdir, logs, xla_cache)
    try:
        outputs = [_wait(p, log) for p, log in zip(procs, logs, strict=True)]
    finally:
        _kill(procs)
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]
    assert f"Resuming from step {stopped}" in outputs[0] and "Final mAP" in outputs[0]
    reference = two_device_reference
    final = _final_arrays(workdir, reference.state)
    expected = jax.device_get(checkpoint_items(reference.state))
    # Gloo between processes and XLA's in-process collectives round differently (~1e-7).
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    ours, theirs = _records(workdir), reference.records
    assert [(r["step"], r["kind"]) for r in ours] == [(r["step"], r["kind"]) for r in theirs]
    for a, b in zip(ours, theirs, strict=True):
        for key in ("loss", "gamma_neg", "map", "map_ema"):
            if key in b:
                assert a[key] == pytest.approx(b[key], abs=1e-5), (a["step"], key)
