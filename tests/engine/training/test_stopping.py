"""The time limit's margin, on a clock the test sets, and the clock it counts on: the process's age."""

import subprocess
import sys
from pathlib import Path

import pytest

from engine.training.stopping import DEFAULT_CHECKPOINT_S, TimeLimit


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_margin_grows_with_what_the_run_measures():
    clock = Clock()
    limit = TimeLimit(1000.0, clock)
    assert limit.margin_s() == 2 * DEFAULT_CHECKPOINT_S  # no step or checkpoint timed yet
    for step_s in (1.0, 3.0, 2.0):
        limit.timed(step_s=step_s)
    limit.timed(checkpoint_s=4.0)
    limit.timed(validation_s=50.0)
    assert limit.margin_s() == 3 * 3.0 + 2 * 4.0  # the slowest recent step, the longest checkpoint write
    assert limit.margin_s(validation_next=True) == pytest.approx(9.0 + 8.0 + 50.0)
    clock.now = 1000.0 - 17.0
    assert not limit.reached()  # exactly the margin left
    clock.now += 0.5
    assert limit.reached() and TimeLimit(None, clock).reached() is False


def test_only_the_recent_steps_count():
    limit = TimeLimit(1000.0, Clock())
    limit.timed(step_s=30.0)  # a slow first step (compilation)
    for _ in range(20):
        limit.timed(step_s=1.0)
    assert limit.margin_s() == 3 * 1.0 + 2 * DEFAULT_CHECKPOINT_S


def test_the_limit_counts_from_the_process_start_not_from_the_import():
    """A cluster counts a job's time from its start: what ran before the engine was imported counts too."""
    code = "import time; time.sleep(1.5); from engine.training.stopping import process_age_s; print(process_age_s())"
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert 1.5 <= float(out.stdout) < 30
