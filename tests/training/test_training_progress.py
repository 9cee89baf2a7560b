"""Tests of asl_jax.training.progress: a rate without compilation, log lines on their own line."""

import io
import re

import pytest

from asl_jax.training import progress
from asl_jax.training.loop import train_and_evaluate
from asl_jax.training.progress import ProgressBar, StepRate
from train.configs.default import get_config


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_rate_starts_after_the_first_step():
    clock = FakeClock()
    rate = StepRate(batch_size=16, clock=clock)
    assert rate.postfix(9, total=17) == ""
    clock.now = 10.0  # the first step compiles for 10 s
    rate.mark(1)
    assert rate.postfix(9, total=17) == ""  # one point: no rate yet
    for step in range(2, 10):  # then 0.5 s a step
        clock.now += 0.5
        rate.mark(step)
    # 8 steps in 4 s since the first: 2 steps/s, 32 images/s, 8 steps left = 4 s. Counting the
    # first step would give 9 steps in 14 s (0.64 step/s, ETA 12 s).
    assert rate.steps_per_second() == pytest.approx(2.0)
    assert rate.postfix(9, total=17) == "ETA 00:04, 2 step/s, 32 img/s"


def test_a_resumed_session_and_large_rates():
    clock = FakeClock()
    rate = StepRate(batch_size=256, clock=clock)
    rate.mark(510)  # resumed at step 500: the first fetch, after its compilation
    clock.now = 2.0
    rate.mark(550)
    # 20 steps/s of 256 images; 4450 steps left at 20 steps/s = 3 min 42.5 s.
    assert rate.postfix(550, total=5000) == "ETA 03:42, 20 step/s, 5120 img/s"
    # Between two points the ETA follows the step the bar shows.
    assert rate.postfix(4990, total=5000) == "ETA 00:00, 20 step/s, 5120 img/s"
    assert rate.postfix(3800, total=5000) == "ETA 01:00, 20 step/s, 5120 img/s"


def test_the_bar_says_compiling_until_the_first_step_then_shows_the_rate():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar(total=10, initial=0, batch_size=8, clock=clock, file=out)
    try:
        assert bar.bar.desc == "train (compiling)"
        clock.now = 30.0
        bar.update()
        assert bar.bar.desc == "train" and not bar.bar.postfix
        bar.synced(1)
        bar.update()
        clock.now = 31.0
        bar.synced(2)
        bar.set_metrics(loss="0.5")
        assert bar.bar.postfix == "ETA 00:08, 1 step/s, 8 img/s, loss=0.5"
        assert "train:  20%|" in out.getvalue() and "8 img/s" in out.getvalue()
    finally:
        bar.close()
    assert progress._open_bar is None


def _screen(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: ``\\r`` returns to the start of the line."""
    lines = []
    for raw in text.split("\n"):
        line: list[str] = []
        for segment_index, segment in enumerate(raw.split("\r")):
            if segment_index:  # after a \r: overwrite from column 0
                line[: len(segment)] = segment
            else:
                line = list(segment)
        lines.append("".join(line).rstrip())
    return lines


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    config = get_config()
    config.model.width = 4
    config.data.image_size = 16
    config.data.num_train = 32
    config.data.num_val = 16
    config.data.cache_dir = str(tmp_path_factory.mktemp("shapes"))
    config.batch_size = 16
    config.num_steps = 4
    config.eval_every = 2
    config.checkpoint_every = 4
    config.progress_bar = True
    workdir = tmp_path_factory.mktemp("run")
    capture = pytest.MonkeyPatch()
    err = io.StringIO()
    capture.setattr("sys.stderr", err)
    try:
        train_and_evaluate(config, workdir, handle_signals=False)
    finally:
        capture.undo()
    return err.getvalue()


def test_log_lines_never_share_a_line_with_the_bar(run_output):
    screen = _screen(run_output)
    logged = [line for line in screen if re.search(r"Training cnn on|step \d+: mAP", line)]
    assert len(logged) == 3, screen  # the start, and the evaluations at steps 2 and 4
    for line in logged:
        assert line.startswith(("Training cnn on", "step ")), line
    # The bar was drawn, first compiling, then with the rate of the global batch.
    assert "train (compiling):   0%|" in run_output
    assert re.search(r"train:  \d+%\|.*step/s, [\d.]+ img/s", run_output)
