"""One writer per workdir: an exclusive lock held for the whole life of a run.

:func:`lock_workdir` takes an advisory lock (``flock``) on ``WORKDIR/.lock`` and records in that
file who holds it (process id, host, command, start time). A second writer is refused at once
with :class:`WorkdirBusyError`, whose message names the holder. The kernel releases the lock
when the holding process ends, however it ends (``kill -9`` included): a crash never leaves a
workdir locked. A clean release also removes the file.

Several hosts: only process 0 locks (on a filesystem shared by the hosts, a lock per host would
refuse the run's own processes); the others learn process 0's outcome through a collective and
raise the same error, so that none waits alone in a later collective.

Reading a workdir (``train.evaluate --output=...``, ``train.predict``, ``train.export``) takes no
lock and works while the run trains.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import inspect
import json
import os
import shlex
import socket
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: The lock file, in the workdir.
LOCK_FILE = ".lock"

# Lock files this process holds: closed in a forked child (a worker process), so that a child
# that outlives a killed parent does not keep the workdir locked.
_held: weakref.WeakSet[WorkdirLock] = weakref.WeakSet()


def _close_in_child() -> None:
    for lock in list(_held):
        lock._close_fd()


os.register_at_fork(after_in_child=_close_in_child)


class WorkdirBusyError(RuntimeError):
    """Raised when another process holds the workdir's lock (the message names it)."""


class WorkdirLock:
    """A held workdir lock; :meth:`release` (or leaving the ``with`` block) releases it."""

    def __init__(self, workdir: str, fd: int | None, created: bool):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd = fd
        self._created = created  # the workdir did not exist before: removed again if left empty
        if fd is not None:
            _held.add(self)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def release(self) -> None:
        """Removes the lock file and releases the lock (idempotent)."""
        if self._fd is not None:
            try:
                os.unlink(self.path)  # while still holding it: see _acquire
            except OSError:
                pass
            self._close_fd()
        if self._created:
            self._created = False
            try:
                os.rmdir(self.workdir)  # only when nothing was written
            except OSError:
                pass

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        self._close_fd()


def holder_description(info: dict[str, Any]) -> str:
    """``process 123 on host h (python -m train ..., started 2025-01-01 12:00:00)``."""
    if not info:
        return "another process (it has not recorded itself yet)"
    details = [str(info["command"])] if info.get("command") else []
    if info.get("started"):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        details.append(f"started {started}")
    text = f"process {info.get('pid', '?')} on host {info.get('host', '?')}"
    return f"{text} ({', '.join(details)})" if details else text


def _read_info(path: str, attempts: int = 20) -> dict[str, Any]:
    """The holder's record; it writes it just after locking, so an empty file is retried."""
    for _ in range(attempts):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if text.strip():
                return json.loads(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.025)
    return {}


def _acquire(workdir: str, what: str | None) -> WorkdirLock:
    """Process-local part of :func:`lock_workdir`."""
    created = not os.path.isdir(workdir)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WorkdirBusyError(
                    f"{workdir} is in use by {holder_description(_read_info(path))}: one run at "
                    "a time writes a workdir; wait for it to end or use another workdir"
                ) from None
            # A filesystem without locks (ENOLCK, EOPNOTSUPP...): run unprotected, and say so.
            print(
                f"warning: cannot lock {path} ({e.strerror}); a second run started in this "
                "workdir would not be refused.",
                file=sys.stderr,
                flush=True,
            )
            return WorkdirLock(workdir, None, created)
        # The previous holder removes the file before it unlocks: a lock taken on a file that
        # is no longer the one at ``path`` is not the workdir's lock; try again.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": what or shlex.join(["python", *_argv()]),
        "started": time.time(),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return WorkdirLock(workdir, fd, created)


def _argv() -> list[str]:
    """This process's command line, ``-m module`` for a module run with ``python -m``."""
    argv = list(sys.argv)
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and argv:
        name = spec.name.removesuffix(".__main__")
        return ["-m", name, *argv[1:]]
    return argv


def lock_workdir(workdir: str | os.PathLike[str], *, what: str | None = None) -> WorkdirLock:
    """Locks ``workdir`` (created if missing) for this run; on several hosts, process 0's lock.

    Args:
      workdir: the directory.
      what: how the holder is described to a refused process (default: this command line).

    Returns:
      The held lock: release it with :meth:`WorkdirLock.release` or a ``with`` block.

    Raises:
      WorkdirBusyError: another process holds it (the message names that process).
      OSError: the workdir cannot be created.
    """
    import jax

    workdir = os.path.abspath(os.fspath(workdir))
    if jax.process_count() == 1:
        return _acquire(workdir, what)
    lock, failure = None, ""
    if jax.process_index() == 0:
        try:
            lock = _acquire(workdir, what)
        except (WorkdirBusyError, OSError) as e:
            failure = f"{type(e).__name__}:{e}"
    failure = _share_from_process_0(failure)
    if failure:
        kind, _, message = failure.partition(":")
        if lock is None and jax.process_index() != 0:
            message = f"process 0: {message}"
        raise WorkdirBusyError(message) if kind == "WorkdirBusyError" else OSError(message)
    return lock if lock is not None else WorkdirLock(workdir, None, False)


#: Bytes of process 0's outcome shared with the other processes.
_MESSAGE_BYTES = 2048


def _share_from_process_0(message: str) -> str:
    """Process 0's ``message`` on every process."""
    import numpy as np
    from jax.experimental import multihost_utils

    data = message.encode()[:_MESSAGE_BYTES].ljust(_MESSAGE_BYTES, b"\0")
    shared = multihost_utils.broadcast_one_to_all(np.frombuffer(data, dtype=np.uint8))
    return bytes(np.asarray(shared, dtype=np.uint8)).rstrip(b"\0").decode(errors="replace")


def holds_workdir_lock(fn: Callable[..., T]) -> Callable[..., T]:
    """Makes ``fn`` run holding the lock of its ``workdir`` argument (:func:`lock_workdir`).

    For commands whose workdir holds their own results beside the runs' workdirs
    (``train.compare``, ``train.sweep``): a second invocation into it is refused at once.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args: Any, **kwargs: Any) -> T:
        workdir = signature.bind(*args, **kwargs).arguments["workdir"]
        with lock_workdir(workdir):
            return fn(*args, **kwargs)

    return locked
