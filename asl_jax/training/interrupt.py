"""Stopping a run at a step boundary: signals, ``stop_at_step`` and preemption across hosts.

SIGINT / SIGTERM only set a flag (:class:`StopFlag`); the loop asks :func:`interruption` after
each step whether to stop, saves a checkpoint there and returns. Every host of a multi-host run
stops after the same step, so that they write one checkpoint together and none waits forever in
a collective.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import jax
import numpy as np


def preemption_service() -> bool:
    """Whether JAX's coordination service watches for SIGTERM on this host (several hosts).

    ``jax.distributed.initialize`` starts a preemption sync manager (unless
    ``jax_enable_preemption_service`` is off) whose notifier catches SIGTERM, or the cloud's
    preemption notice, and tells every host.
    """
    return (
        jax.process_count() > 1
        and jax.distributed.is_initialized()
        and bool(jax.config.jax_enable_preemption_service)
    )


class StopFlag:
    """SIGINT/SIGTERM set a flag that the loop reads at step boundaries.

    A second SIGINT while the flag is already set raises KeyboardInterrupt (the user insists).
    Handlers are only installed from the main thread and are restored by :meth:`restore`. When
    JAX's preemption service runs (:func:`preemption_service`), SIGTERM is left to it: a Python
    handler would replace its notifier, and the service is what tells the other hosts.
    """

    def __init__(self, install: bool):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self.preemption_service = preemption_service()
        signums = [signal.SIGINT] + ([] if self.preemption_service else [signal.SIGTERM])
        if install and threading.current_thread() is threading.main_thread():
            for signum in signums:
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\nReceived {signal.Signals(signum).name}: stopping at the next step boundary "
            "and saving a checkpoint (press Ctrl-C again to abort without saving).",
            file=sys.stderr,
            flush=True,
        )

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def agree(flag: bool) -> bool:
    """True on every host when ``flag`` is True on any host."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())


def interruption(stop: StopFlag, step: int, by_request: bool, *, fetch: bool) -> int | None:
    """The signal that stops the run after ``step`` (0 = ``stop_at_step``), or None.

    One host checks every step. Several hosts use:

    - SIGTERM, when JAX's preemption service runs (``jax.distributed``'s default): the service
      passes a SIGTERM of any host to all, and ``reached_preemption_sync_point`` names the same
      step on each (one past the furthest host). It is a local call, made every step.
    - Otherwise (SIGINT, SIGTERM without the service, ``stop_at_step``): an all-gather of the
      flags at each metric fetch (``fetch``: every ``log_every`` steps, or every
      ``max_consecutive_nonfinite`` when sooner). The fetch has already waited for the step, so
      the collective of one integer per host adds about a millisecond where the host would
      otherwise idle; every step it would stall the dispatch of the next step each time.
    """
    if stop.preemption_service:
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
            return _announce_stop(step, int(signal.SIGTERM), "a preemption notice (SIGTERM)")
    if jax.process_count() > 1 and not fetch:
        return None
    if not agree(stop.signum is not None or by_request):
        return None
    if stop.signum is not None:
        return _announce_stop(step, stop.signum, signal.Signals(stop.signum).name)
    if by_request:
        return 0
    # SIGTERM when only another host was signalled.
    return _announce_stop(step, int(signal.SIGTERM), "a signal to another process")


def _announce_stop(step: int, signum: int, cause: str) -> int:
    """Says on each host of a multi-host run why and where it stops; returns ``signum``."""
    if jax.process_count() > 1:
        print(
            f"process {jax.process_index()}/{jax.process_count()}: {cause}; stopping after step "
            f"{step} and saving a checkpoint.",
            file=sys.stderr,
            flush=True,
        )
    return signum
