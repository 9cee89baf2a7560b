"""``kill -9`` of one of two processes: the survivor says in one line which process it lost and
where the last checkpoint is, and exits with 1 (not a C++ abort after 80 lines). The processes
use the harness of ``test_train_main`` (``jax.distributed`` on 127.0.0.1, one CPU device each)."""

import os
import re
import signal
import socket
import time

from test_train_main import TIMEOUT, _command, _kill, _start, _wait

HEARTBEAT_S = 5  # how soon the coordinator counts a silent process as lost


def test_the_survivor_of_a_killed_peer_exits_with_one_line(cache_dir, tmp_path):
    workdir = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    procs = [
        _start(
            _command(
                cache_dir,
                workdir,
                "--config.num_steps=100000",  # still training when its peer dies
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                f"--heartbeat_timeout_s={HEARTBEAT_S}",
            ),
            1,
            log,
        )
        for i, log in enumerate(logs)
    ]
    try:
        deadline = time.time() + TIMEOUT
        while not (workdir / "checkpoints" / "4").is_dir():
            for proc, log in zip(procs, logs, strict=True):
                assert proc.poll() is None, open(log).read()[-3000:]
            assert time.time() < deadline, "no checkpoint was saved"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        output = _wait(procs[0], logs[0], timeout=HEARTBEAT_S + 60)
        noticed_in = time.time() - killed
    finally:
        _kill(procs)
    print(f"the loss of process 1 ended process 0 after {noticed_in:.1f} s")
    assert procs[0].returncode == 1, output[-3000:]
    assert "Check failure" not in output and "Traceback" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: process 0/2 lost process 1 of the run "), last
    step = int(re.search(r"the last checkpoint is \S+/checkpoints/(\d+) \(step \1\)", last)[1])
    assert step >= 4 and str(step) in os.listdir(workdir / "checkpoints")
    assert last.endswith("Rerun the same command on every host to resume.")
