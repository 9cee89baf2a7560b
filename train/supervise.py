"""A process of a multi-host run whose peer died: one line and exit status 1, not a C++ abort.

When a process of a ``jax.distributed`` run dies (``kill -9``, a crashed host), JAX's
coordination service notices it (its heartbeat timeout, or at once when the coordinator itself is
gone) and every other process ends in a C++ ``LOG(FATAL)``: SIGABRT (exit status 134) after about
80 lines of logs and stack. No Python code runs in that process any more (the client's own
callback for this cannot be given from Python in this jaxlib), so ``python -m train`` on several
hosts runs the training in a child process and watches it: the child's stderr is passed through,
except the coordination service's fatal report, which becomes one line naming the lost process and
the last checkpoint in the workdir (exit status 1). Every other end keeps the child's exit status.
A peer's death can also reach the survivor first as a failed collective (Gloo: connection closed
by peer): the child reports it in the same line itself (:func:`lost_peer_line`).

The child is killed with its parent (``PR_SET_PDEATHSIG``); SIGTERM to the parent is passed on
(a terminal's SIGINT reaches both: the parent ignores it).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence

#: Set in the child's environment: it trains instead of watching.
CHILD_ENV = "ASL_JAX_SUPERVISED_CHILD"

#: Where the coordination service's reports start (what is held back from the console).
_TRIGGER = re.compile(
    rb"^[EFW]\d{4} [\d:.]+\s+\d+ "
    rb"(coordination_service\w*|preemption_sync_manager|client)\.\w+:\d+\]",
    re.MULTILINE,
)
_FATAL = b"JAX distributed service detected fatal errors"
_UNHEALTHY = re.compile(rb"tasks are unhealthy \(stopped sending heartbeats\):\s*\n([\d\s,]+)\n")


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def supervise(
    command: Sequence[str], *, workdir: str, process_id: int | None, num_processes: int | None
) -> int:
    """Runs ``command`` (this command line, in the child) and returns its exit status; a fatal
    error of the coordination service becomes one ``error:`` line and 1."""
    env = {**os.environ, CHILD_ENV: "1"}
    proc = subprocess.Popen(
        list(command), stderr=subprocess.PIPE, env=env, preexec_fn=_die_with_parent
    )
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda s, f: proc.send_signal(s)),
    }
    held = b""
    out = sys.stderr.buffer
    try:
        while chunk := os.read(proc.stderr.fileno(), 65536):
            if held:
                held += chunk
                continue
            match = _TRIGGER.search(chunk)
            if match is None:
                out.write(chunk)
                out.flush()
                continue
            out.write(chunk[: match.start()])
            out.flush()
            held = chunk[match.start() :]
        returncode = proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if _FATAL in held and returncode == -signal.SIGABRT:
        print(
            f"error: {_lost(held, process_id, num_processes)}; {_last_checkpoint(workdir)}. "
            "Rerun the same command on every host to resume.",
            file=sys.stderr,
            flush=True,
        )
        return 1
    out.write(held)
    out.flush()
    return 128 - returncode if returncode < 0 else returncode


#: A collective that failed because a process of the run is gone (Gloo on CPU).
_COLLECTIVE_LOST = re.compile(
    r"Gloo \w+ failed: .*?((?:Connection closed|Connection reset) by peer(?: \S+)?)"
)


def lost_peer_line(
    error: BaseException, *, workdir: str, process_id: int, num_processes: int
) -> str | None:
    """The one line for a collective that failed because a peer is gone, or None.

    A peer's death can surface in the survivor as a failed collective (its connection closed)
    before the coordination service notices it: the same line then, without waiting for it.
    """
    found = _COLLECTIVE_LOST.search(str(error))
    if found is None:
        return None
    # With two processes, the lost one is the other.
    peer = f"process {1 - process_id}" if num_processes == 2 else "another process"
    return (
        f"process {process_id}/{num_processes} lost {peer} of the run (a collective failed: "
        f"{found.group(1)}); {_last_checkpoint(workdir)}. Rerun the same command on every "
        "host to resume."
    )


def _lost(report: bytes, process_id: int | None, num_processes: int | None) -> str:
    """Which process was lost, from the coordination service's report."""
    me = f"process {process_id}/{num_processes}" if process_id is not None else "this process"
    unhealthy = _UNHEALTHY.search(report)
    if unhealthy:
        ids = ", ".join(re.findall(r"\d+", unhealthy.group(1).decode()))
        return (
            f"{me} lost process {ids} of the run (it stopped sending heartbeats to the "
            "coordinator: it died or its host is unreachable)"
        )
    if process_id != 0:
        return (
            f"{me} lost process 0 of the run, the coordinator (it died or its host is unreachable)"
        )
    return f"{me} lost another process of the run (the coordination service reported it)"


def _last_checkpoint(workdir: str) -> str:
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    try:
        steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
    except OSError:
        steps = []
    if not steps:
        return f"no checkpoint was saved in {directory}"
    step = max(steps)
    return f"the last checkpoint is {os.path.join(directory, str(step))} (step {step})"
