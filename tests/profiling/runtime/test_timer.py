import time

import pytest

from profiling.runtime.timer import PhaseTimer


class Sink:
    def __init__(self):
        self.records = []

    def write(self, record):
        self.records.append(record)


def test_phases_nest_and_add_up_to_the_step():
    sink = Sink()
    timer = PhaseTimer("cpu", sink)
    with timer.phase("data"):
        time.sleep(0.02)
    with timer.phase("forward"):
        time.sleep(0.01)
        with timer.phase("loss"):  # nested: counted in loss, not again in forward
            time.sleep(0.03)
    time.sleep(0.015)  # outside any phase: lands in `other`
    record = timer.end_step(0)
    assert sink.records == [record]
    assert record["data"] == pytest.approx(20, abs=8)
    assert record["loss"] == pytest.approx(30, abs=8)
    assert record["forward"] == pytest.approx(10, abs=8)
    assert record["other"] == pytest.approx(15, abs=8)
    parts = sum(record[k] for k in ("data", "forward", "loss", "other"))
    assert parts == pytest.approx(record["wall_ms"], abs=0.05)


def test_each_step_is_one_record_and_disabled_timer_records_nothing():
    sink = Sink()
    timer = PhaseTimer("cpu", sink)
    for step in range(3):
        with timer.phase("backward"):
            pass
        timer.end_step(step)
    assert [r["step"] for r in sink.records] == [0, 1, 2]
    off = PhaseTimer("cpu", sink, enabled=False)
    with off.phase("forward"):
        pass
    assert off.end_step(3) is None and len(sink.records) == 3
