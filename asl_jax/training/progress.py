"""The training progress bar: a rate and an ETA that leave out compilation, and images/s.

tqdm's own rate counts from the bar's creation, so the first step, which compiles the train
program (seconds to minutes), enters the rate and the ETA: ``1/1024 [00:10<2:53:46, 10.19s/step]``.
Here the bar says ``compiling`` until the first step has run, and the rate (steps/s, images/s of
the global batch) and the ETA are measured from a point after that step (:class:`StepRate`).
While the bar is open, the training loop's log lines go through :meth:`ProgressBar.write`, which
clears the bar, prints the line and redraws the bar below it: a line never shares the bar's line.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import IO, Any

import jax

#: The bar that is open, if any: :func:`log` writes through it.
_open_bar: ProgressBar | None = None

#: tqdm's default layout without its rate and ETA: ours come in the postfix.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def _format_interval(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


@dataclasses.dataclass
class StepRate:
    """Steps/s of a training session, between points where the device had finished a step.

    The host dispatches steps ahead of the device, so the time a step is dispatched says little;
    the points are taken when the loop fetches a step's metrics (``jax.device_get`` waits for
    it). The first point comes after the first step, so its compilation is not counted.

    Attributes:
      batch_size: the global batch size (images per step), for images/s.
      clock: seconds of a monotonic clock (tests give a fake one).
    """

    batch_size: int
    clock: Callable[[], float] = time.monotonic
    first: tuple[int, float] | None = None  # (step, time) of the first point
    last: tuple[int, float] | None = None

    def mark(self, step: int) -> None:
        """Records that the device has finished ``step`` (counted from the start of the run)."""
        now = self.clock()
        if self.first is None:
            self.first = (step, now)
        self.last = (step, now)

    def steps_per_second(self) -> float | None:
        """Steps/s from the first point to the last (None before a second point)."""
        if self.first is None or self.last is None or self.last[0] == self.first[0]:
            return None
        (step0, t0), (step1, t1) = self.first, self.last
        return (step1 - step0) / max(t1 - t0, 1e-9)

    def postfix(self, step: int, total: int) -> str:
        """``ETA 00:04, 2 step/s, 32 img/s`` at ``step`` of ``total`` (empty without a rate)."""
        rate = self.steps_per_second()
        if rate is None:
            return ""
        eta = _format_interval(max(total - step, 0) / rate)
        images = rate * self.batch_size
        # 3 significant digits, without the exponent that .3g gives from 1000 on.
        images_text = f"{images:.0f}" if images >= 100 else f"{images:.3g}"
        return f"ETA {eta}, {rate:.3g} step/s, {images_text} img/s"


class ProgressBar:
    """A tqdm bar of the training steps with :class:`StepRate`'s rate, ETA and images/s.

    Args:
      total: the run's number of steps.
      initial: the step the session starts at (a resumed run).
      batch_size: the global batch size.
      clock: for :class:`StepRate`.
      file: where the bar and the written lines go (default: stderr at creation).
    """

    def __init__(
        self,
        total: int,
        initial: int,
        batch_size: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        file: IO[str] | None = None,
    ):
        from tqdm.auto import tqdm

        self.rate = StepRate(batch_size, clock)
        self.total = total
        self.compiling = True  # until the first step has been dispatched (compiled)
        self.metrics = ""
        self.file = sys.stderr if file is None else file
        self.bar: Any = tqdm(
            total=total,
            initial=initial,
            desc="train (compiling)",
            unit="step",
            leave=False,
            bar_format=BAR_FORMAT,
            file=self.file,
        )
        global _open_bar
        _open_bar = self

    def update(self, n: int = 1) -> None:
        """Advances the bar by ``n`` dispatched steps (the first call ends the compilation)."""
        if self.compiling:
            self.compiling = False
            self.bar.set_description_str("train", refresh=False)
        self._set_postfix(self.bar.n + n)
        self.bar.update(n)

    def synced(self, step: int) -> None:
        """The device has finished ``step``: a point of the rate (see :class:`StepRate`)."""
        self.rate.mark(step)
        self._set_postfix(self.bar.n)

    def set_metrics(self, **metrics: str) -> None:
        """Shows ``key=value`` after the rate (the last logged loss and γ−)."""
        self.metrics = ", ".join(f"{k}={v}" for k, v in metrics.items())
        self._set_postfix(self.bar.n)
        self.bar.refresh()

    def _set_postfix(self, step: int) -> None:
        parts = [p for p in (self.rate.postfix(step, self.total), self.metrics) if p]
        self.bar.set_postfix_str(", ".join(parts), refresh=False)

    def write(self, message: str) -> None:
        """Prints ``message`` on its own line above the bar."""
        self.bar.write(message, file=self.file)
        self.file.flush()

    def close(self) -> None:
        global _open_bar
        if _open_bar is self:
            _open_bar = None
        self.bar.close()


def log(message: str) -> None:
    """Prints ``message`` to stderr on process 0, through the open :class:`ProgressBar` if any.

    The other processes of a multi-host run would print the same line.
    """
    if jax.process_index() != 0:
        return
    if _open_bar is not None:
        _open_bar.write(message)
    else:
        print(message, file=sys.stderr, flush=True)
