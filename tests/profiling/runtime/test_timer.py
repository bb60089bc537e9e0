import pytest

from profiling.runtime.timer import PhaseTimer, nvtx_ranges


class Sink:
    def __init__(self):
        self.records = []

    def write(self, record):
        self.records.append(record)


class Clock:
    """A clock the test moves: seconds pass only when it says so."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def wait(self, ms):
        self.now += ms / 1e3


def test_phases_nest_and_what_runs_outside_them_is_other():
    sink, clock = Sink(), Clock()
    timer = PhaseTimer("cpu", sink, clock=clock)
    clock.wait(5)  # before the first phase: the loop's own work
    with timer.phase("data"):
        clock.wait(20)
    with timer.phase("forward"):
        clock.wait(10)
        with timer.phase("loss"):  # nested: counted in loss, not again in forward
            clock.wait(30)
        clock.wait(2)
    clock.wait(10)  # outside any phase
    record = timer.end_step(0)
    assert sink.records == [record]
    assert record["wall_ms"] == pytest.approx(77)
    assert (record["data"], record["forward"], record["loss"]) == (
        pytest.approx(20),
        pytest.approx(12),
        pytest.approx(30),
    )
    assert record["other"] == pytest.approx(15)  # 5 before the phases, 10 after them


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


class Ranges:
    """A stand-in for torch.cuda.nvtx: the ranges pushed and popped, in order."""

    def __init__(self):
        self.calls = []

    def range_push(self, name):
        self.calls.append(f"push {name}")

    def range_pop(self):
        self.calls.append("pop")


def test_each_step_and_each_phase_in_it_is_an_nvtx_range():
    ranges = Ranges()
    timer = PhaseTimer("cpu", Sink(), clock=Clock(), ranges=ranges)
    for step in (1, 2):
        timer.begin_step(step)
        with timer.phase("capture"):  # where Nsight's capture range starts and stops: no range around it
            pass
        with timer.phase("forward"):
            with timer.phase("loss"):
                pass
        timer.end_step(step)
    timer.end_step(3)  # a step begun without begin_step closes no range
    one_step = ["push forward", "push loss", "pop", "pop", "pop"]
    assert ranges.calls == ["push step 1", *one_step, "push step 2", *one_step]


def test_nvtx_ranges_are_cuda_s_alone():
    import torch

    assert nvtx_ranges("cpu", True) is None and nvtx_ranges("cuda", False) is None
    assert nvtx_ranges("cuda:1", True) is torch.cuda.nvtx
    assert PhaseTimer("cpu", enabled=False, ranges=Ranges()).ranges is None  # a disabled timer marks nothing
