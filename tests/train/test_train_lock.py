"""Two ``python -m train`` launches into one workdir: the second is refused in one line, the
first completes as if alone (the processes use the harness of ``test_train_main``)."""

import json
import os
import signal
import subprocess
import time

from test_train_main import REPO, TIMEOUT, _command, _env, _kill, _records, _start, _wait


def test_a_second_launch_into_a_running_workdir_is_refused_in_one_line(cache_dir, tmp_path):
    workdir, log = tmp_path / "run", tmp_path / "first.log"
    first = _start(_command(cache_dir, workdir), 1, log)
    try:
        deadline = time.time() + TIMEOUT
        while "Training cnn on shapes" not in open(log).read():
            assert first.poll() is None, open(log).read()[-3000:]
            assert time.time() < deadline, "the run did not start"
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # mid-run, holding the workdir, for as long as needed
        start = time.time()
        second = subprocess.run(
            _command(cache_dir, workdir, "--config.seed=1"),
            cwd=REPO,
            env=_env(1),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        refused_in = time.time() - start
        first.send_signal(signal.SIGCONT)
        output = _wait(first, log)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
        _kill([first])
    assert second.returncode == 1, second.stderr[-3000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert lines[0].startswith(f"error: {workdir} is in use by process {first.pid} on host "), lines
    assert "(python -m train --config." in lines[0] and ", started " in lines[0]
    print(f"second launch refused in {refused_in:.1f} s: {lines[0]}")
    assert first.returncode == 0, output[-3000:]
    assert "Final mAP" in output
    assert json.load(open(workdir / "config.json"))["seed"] == 0
    steps = [(r["kind"], r["step"]) for r in _records(workdir)]
    assert len(steps) == len(set(steps))  # one run's records
    assert not os.path.exists(workdir / ".lock")
