"""The workdir lock: one writer at a time, the holder named, nothing left after a crash."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from asl_jax.training.lock import LOCK_FILE, WorkdirBusyError, holds_workdir_lock, lock_workdir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_second_lock_is_refused_naming_the_holder_until_it_is_released(tmp_path):
    workdir = tmp_path / "run"
    lock = lock_workdir(workdir)
    info = json.loads((workdir / LOCK_FILE).read_text())
    assert info["pid"] == os.getpid() and info["host"] and info["command"]
    with pytest.raises(WorkdirBusyError, match=rf"{workdir} is in use by process {os.getpid()} "):
        lock_workdir(workdir)
    lock.release()
    lock.release()  # idempotent
    assert not workdir.exists()  # created for the lock, left empty: removed again
    with lock_workdir(workdir, what="python -m train.evaluate") as held:
        (workdir / "config.json").write_text("{}")
        with pytest.raises(WorkdirBusyError, match=r"\(python -m train\.evaluate, started "):
            lock_workdir(str(workdir) + "/")
    assert not held.held and sorted(os.listdir(workdir)) == ["config.json"]
    lock_workdir(workdir).release()


def test_a_decorated_function_holds_the_lock_of_its_workdir_argument(tmp_path):
    @holds_workdir_lock
    def write(config, workdir, *, name):
        with pytest.raises(WorkdirBusyError):
            lock_workdir(workdir)
        (tmp_path / name).write_text(config)
        return name

    assert write("x", tmp_path, name="a") == "a"
    with lock_workdir(tmp_path), pytest.raises(WorkdirBusyError):
        write("x", workdir=tmp_path, name="b")
    assert not (tmp_path / "b").exists()


def test_a_killed_holder_leaves_the_workdir_unlocked(tmp_path):
    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import time
                from asl_jax.training.lock import lock_workdir
                lock = lock_workdir({str(workdir)!r})
                print("locked", flush=True)
                time.sleep(120)
            """),
        ],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirBusyError, match=rf"in use by process {holder.pid} "):
            lock_workdir(workdir)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert (workdir / LOCK_FILE).exists()  # the record stays, the kernel released the lock
    start = time.time()
    lock_workdir(workdir).release()
    assert time.time() - start < 1.0


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    lock = lock_workdir(tmp_path)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker process that outlives its parent
        os.write(write, b"x")  # after the fork handlers ran
        time.sleep(5)
        os._exit(0)
    try:
        assert os.read(read, 1) == b"x"
        lock._close_fd()  # what the parent's death does: the lock file stays
        assert (tmp_path / LOCK_FILE).exists()
        lock_workdir(tmp_path).release()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)
        os.close(write)
