import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

from profiling import records
from profiling.runtime import captures
from profiling.runtime.captures import (
    PTRACE_FIX,
    Captures,
    NsysCapture,
    PySpyCapture,
    TorchProfileCapture,
    launches_per_step,
    rank_name,
)
from tests.profiling.runtime.test_timer import Ranges

X = torch.randn(32, 32)


def tiny_step(step):
    """Four outermost aten ops every step (add, mul, sin, linear: linear's inner mm and add's inner ops do not
    count), and an exp more on odd steps; a marker names the step in the trace."""
    with torch.profiler.record_function(f"mark{step}"):
        y = torch.add(X, 1.0)
        y = torch.mul(y, X)
        y = torch.sin(y)
        y = torch.nn.functional.linear(y, X)
        if step % 2:
            y = torch.exp(y)
    return y


def run_loop(captures, steps):
    touched = []
    for step in steps:
        if captures.at_step(step):
            touched.append(step)
        tiny_step(step)
    return touched


def markers(path):
    events = json.loads(path.read_text())["traceEvents"]
    return sorted(e["name"] for e in events if str(e.get("name", "")).startswith("mark"))


def test_rank_names_come_from_the_run_folders_names():
    assert rank_name(records.TORCH_TRACE, 0) == records.TORCH_TRACE == "torch_trace.json"
    assert rank_name(records.TORCH_TRACE, 3) == "torch_trace.rank3.json"
    assert rank_name(records.TORCH_PROFILE, 12) == "torch_profile.rank12.json"


def test_a_scheduled_capture_records_the_window_after_a_warm_up_and_counts_ops_per_step(tmp_path):
    said = []
    capture = TorchProfileCapture(tmp_path, "cpu", said.append, rank=2, warmup=2)
    captures = Captures([(capture, (6, 9))], said.append)
    touched = run_loop(captures, range(0, 12))
    captures.close()
    # Warm-up steps 4 and 5 ran under the profiler, and step 9 began with its stop: all are marked as touched.
    assert touched == [4, 5, 6, 7, 8, 9]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["torch_profile.rank2.json", "torch_trace.rank2.json"]
    # Only the window's steps are in the trace: the warm-up steps were traced and thrown away.
    assert markers(tmp_path / "torch_trace.rank2.json") == ["mark6", "mark7", "mark8"]
    profile = json.loads((tmp_path / "torch_profile.rank2.json").read_text())
    assert profile["steps"] == [6, 7, 8] and profile["rank"] == 2
    assert profile["schedule"] == {"wait": 0, "warmup": 2, "active": 3, "first_step": 4}
    per_step = profile["kernels_per_step"]
    assert per_step["unit"] == "aten ops" and "CPU run" in per_step["note"]
    assert per_step["by_step"] == {"6": 4, "7": 5, "8": 4} and per_step["mean"] == pytest.approx(13 / 3)
    names = [row["name"] for row in profile["top"]]
    assert profile["clock"] == "cpu" and "aten::mm" in names and not any("ProfilerStep" in n for n in names)
    calls = {row["name"]: row["calls"] for row in profile["top"]}
    assert calls["aten::sin"] == 3 and calls["aten::exp"] == 1  # three recorded steps, one of them odd
    assert said[0] == "torch.profiler: recording steps 6..8 (warming up from step 4)"
    assert "torch_trace.rank2.json" in said[-1] and "4.3 aten ops per step" in said[-1]


def test_a_run_that_ends_inside_the_window_writes_the_steps_it_recorded(tmp_path):
    said = []
    capture = TorchProfileCapture(tmp_path, "cpu", said.append)
    captures = Captures([(capture, (3, 10))], said.append)
    assert run_loop(captures, range(0, 6)) == [2, 3, 4, 5]
    captures.close()  # the run stopped after step 5
    profile = json.loads((tmp_path / records.TORCH_PROFILE).read_text())
    assert profile["steps"] == [3, 4, 5] and profile["kernels_per_step"]["by_step"] == {"3": 5, "4": 4, "5": 5}
    assert markers(tmp_path / records.TORCH_TRACE) == ["mark3", "mark4", "mark5"]


def test_a_run_that_ends_during_the_warm_up_writes_nothing_and_says_so(tmp_path):
    said = []
    captures = Captures([(TorchProfileCapture(tmp_path, "cpu", said.append, warmup=3), (5, 7))], said.append)
    assert run_loop(captures, range(0, 4)) == [2, 3]
    captures.close()
    assert list(tmp_path.iterdir()) == [] and "before the first recorded step; nothing written" in said[-1]


def test_a_window_at_the_loops_first_step_records_it_without_a_warm_up(tmp_path):
    captures = Captures([(TorchProfileCapture(tmp_path, "cpu", lambda m: None), (5, 7))], lambda m: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "won't be using warmup" warning is expected and silenced
        touched = run_loop(captures, range(5, 9))  # a resumed run whose first step is the window's first
    assert touched == [5, 6, 7]
    profile = json.loads((tmp_path / records.TORCH_PROFILE).read_text())
    assert profile["steps"] == [5, 6] and profile["schedule"]["warmup"] == 0
    assert profile["kernels_per_step"]["by_step"] == {"5": 5, "6": 4}


class Stub:
    """A capture like py-spy: no lead; its start may fail."""

    name, lead = "stub", 0

    def __init__(self, starts=True):
        self.starts, self.events = starts, []

    def start(self, step, window):
        self.events.append(("start", step))
        return self.starts

    def step(self, step):
        self.events.append(("step", step))

    def stop(self):
        self.events.append(("stop",))


def test_captures_mark_the_steps_they_touch_and_a_failed_start_is_not_retried():
    ok, refused = Stub(), Stub(starts=False)
    captures = Captures([(ok, (2, 4)), (refused, (6, 8))], lambda m: None)
    touched = [step for step in range(10) if captures.at_step(step)]
    assert touched == [2, 3, 4]
    assert ok.events == [("start", 2), ("step", 3), ("stop",)]
    assert refused.events == [("start", 6)]


class Failing(Stub):
    """A capture whose profiler raises at one of its calls."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def start(self, step, window):
        if self.at == "start":
            raise RuntimeError("CUPTI is busy")
        return super().start(step, window)

    def step(self, step):
        if self.at == "step":
            raise RuntimeError("profiler lost")
        super().step(step)

    def stop(self):
        if self.at == "stop":
            raise OSError("disk full")
        super().stop()


@pytest.mark.parametrize("at", ["start", "step", "stop"])
def test_a_capture_that_fails_is_one_line_and_the_loop_goes_on(at):
    said, other = [], Stub()
    failing = Failing(at)
    captures = Captures([(failing, (1, 4)), (other, (2, 5))], said.append)
    for step in range(8):
        captures.at_step(step)
    captures.close()
    failed = [line for line in said if "failed to" in line]
    assert len(failed) == 1 and f"failed to {at}" in failed[0] and "training goes on" in failed[0]
    assert other.events == [("start", 2), ("step", 3), ("step", 4), ("stop",)]  # the other capture is untouched
    assert not captures.running


def test_captures_a_cpu_run_cannot_make_are_one_line_each_and_the_run_ends_with_its_checkpoint(
    image_folder, in_tmp, capsys, monkeypatch
):
    """A real Popen of a py-spy that is not there (FileNotFoundError), and --nsys and NVTX (on by default) on a
    CPU: one line each, no CUDA call, and the run trains on and checkpoints."""
    from engine import train
    from tests.conftest import TINY

    monkeypatch.setattr(captures, "py_spy_executable", lambda: "/nonexistent/py-spy")
    cuda = CudaStandIn()
    monkeypatch.setattr(torch.cuda.nvtx, "range_push", cuda.range_push)
    monkeypatch.setattr(torch.cuda.nvtx, "range_pop", cuda.range_pop)
    monkeypatch.setattr(torch.cuda.profiler, "start", cuda.profiler.start)
    monkeypatch.setattr(torch.cuda.profiler, "stop", cuda.profiler.stop)
    monkeypatch.setattr(torch.cuda, "synchronize", cuda.synchronize)
    args = ["--steps", "4", "--name", "nospy", "--py-spy", "2:3", "--nsys", "2:4"]
    train.main([*TINY, "--data", str(image_folder), *args])
    err = capsys.readouterr().err
    assert "py-spy cannot run (No such file or directory: /nonexistent/py-spy); pip install py-spy" in err
    assert "--nsys: Nsight Systems' capture range is CUDA's; this CPU run brackets no steps" in err
    assert "Traceback" not in err and cuda.calls == []
    assert torch.load("runs/nospy/checkpoints/last.pt", weights_only=True)["step"] == 4


def test_py_spy_ending_during_its_window_is_one_line(tmp_path):
    """Real py-spy, attached, then killed before the window ends: nothing to convert, one line."""
    said = []
    capture = PySpyCapture(tmp_path, said.append, native=False)
    if not capture.start():
        pytest.skip(f"py-spy cannot attach on this machine: {said[-1]}")
    capture.proc.kill()
    capture.proc.wait()
    capture.stop()
    (line,) = said  # with py-spy's last words, from pyspy.log
    assert line.startswith("py-spy: nothing recorded (it ended before the window did, exit code -9")
    assert line.endswith("); training goes on")


def test_py_spy_refused_by_the_kernel_is_the_one_line_fix(tmp_path, monkeypatch):
    """Real py-spy, run as an unprivileged user (setpriv), whom the kernel does not let read this root process."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv, to run py-spy as another user")
    reachable = Path(tempfile.mkdtemp())  # where the other user can run a copy of py-spy from
    try:
        reachable.chmod(0o755)
        shutil.copy(shutil.which(captures.py_spy_executable()), reachable / "py-spy")
        wrapper = reachable / "py-spy-as-nobody"
        wrapper.write_text(
            f'#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups {reachable}/py-spy "$@"\n'
        )
        wrapper.chmod(0o755)
        monkeypatch.setattr(captures, "py_spy_executable", lambda: str(wrapper))
        said = []
        assert PySpyCapture(tmp_path, said.append).start() is False and said == [PTRACE_FIX]
    finally:
        shutil.rmtree(reachable)


class CudaStandIn(Ranges):
    """What NVTX ranges and Nsight's capture range call of torch.cuda, recorded in order."""

    def __init__(self):
        super().__init__()
        self.profiler = self.Profiler(self.calls)

    class Profiler:
        def __init__(self, calls):
            self.calls = calls

        def start(self):
            self.calls.append("cudaProfilerStart")

        def stop(self):
            self.calls.append("cudaProfilerStop")

    def synchronize(self, device=None):
        self.calls.append("synchronize")


def test_nsys_starts_before_the_window_s_first_step_and_stops_before_its_stop_step():
    cuda = CudaStandIn()
    captures = Captures([(NsysCapture("cuda", cuda=cuda), (4, 7))], lambda m: None)
    touched = []
    for step in range(1, 10):
        cuda.calls.append(f"step {step}")
        if captures.at_step(step):
            touched.append(step)
    captures.close()
    assert touched == [4, 5, 6, 7]
    window = cuda.calls[cuda.calls.index("step 4") : cuda.calls.index("step 8")]
    assert window == ["step 4", "synchronize", "cudaProfilerStart", "step 5", "step 6",
                      "step 7", "synchronize", "cudaProfilerStop"]  # fmt: skip
    assert cuda.calls.count("cudaProfilerStart") == cuda.calls.count("cudaProfilerStop") == 1


def test_nsys_records_whole_steps_each_an_nvtx_range_with_its_phases(image_folder, in_tmp, monkeypatch):
    """The real loop on the CPU, with a stand-in for CUDA's calls: the capture range holds steps 3 and 4 whole
    (no range open at either end), and each step's range holds the step's phases."""
    from engine import train
    from engine.training import loop
    from tests.conftest import TINY

    cuda = CudaStandIn()
    monkeypatch.setattr(loop, "nvtx_ranges", lambda device, wanted: cuda if wanted else None)
    monkeypatch.setattr(loop, "nsys_capture", lambda device, log: NsysCapture(device, cuda=cuda))
    train.main([*TINY, "--data", str(image_folder), "--steps", "6", "--name", "nsys", "--nsys", "3:5"])
    calls, depth, open_at = cuda.calls, 0, {}
    for call in calls:
        depth += 1 if call.startswith("push") else -1 if call == "pop" else 0
        open_at.setdefault(call, depth)
    assert depth == 0 and open_at["cudaProfilerStart"] == open_at["cudaProfilerStop"] == 0
    captured = calls[calls.index("cudaProfilerStart") : calls.index("cudaProfilerStop")]
    assert [c for c in captured if c.startswith("push step")] == ["push step 3", "push step 4"]
    step_3 = calls[calls.index("push step 3") : calls.index("push step 4")]
    phases = {"data", "h2d", "forward", "loss", "backward", "optimizer", "logging"}
    assert {c.removeprefix("push ") for c in step_3 if c.startswith("push ")} == {"step 3", *phases}


def kernel(ts, correlation):
    return {"ph": "X", "cat": "kernel", "name": "k", "ts": ts, "dur": 1, "args": {"correlation": correlation}}


def launch(ts, correlation, cat="cuda_runtime"):
    return {"ph": "X", "cat": cat, "name": "cudaLaunchKernel", "ts": ts, "dur": 1, "args": {"correlation": correlation}}


def test_cuda_kernels_count_toward_the_step_that_launched_them():
    step = [
        {"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{n}", "ts": 100 * n, "dur": 90} for n in (2, 3)
    ]
    events = step + [
        launch(205, 1),
        kernel(210, 1),
        launch(250, 2, "cuda_driver"),  # a Triton kernel, launched through the driver API
        kernel(295, 2),  # runs after its step's span ended: still step 2's
        launch(300, 3),
        kernel(320, 3),
        kernel(330, 99),  # no launch event: counted by its own start
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD", "ts": 305, "dur": 3, "args": {"correlation": 4}},
        {"ph": "X", "cat": "cpu_op", "name": "aten::add", "ts": 301, "dur": 3},
    ]
    counted = launches_per_step(events, cuda=True, first_step=10, steps=[12, 13])
    assert counted["unit"] == "CUDA kernels" and counted["by_step"] == {"12": 2, "13": 2} and counted["mean"] == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_capture_counts_the_kernels_each_step_launched(tmp_path):
    x = torch.randn(1024, 1024, device="cuda")
    captures = Captures([(TorchProfileCapture(tmp_path, "cuda", lambda m: None), (3, 6))], lambda m: None)
    for step in range(8):
        captures.at_step(step)
        x.add_(1.0)
        x.mul_(0.5)
        torch.sin(x, out=x)  # three elementwise kernels per step
    captures.close()
    profile = json.loads((tmp_path / records.TORCH_PROFILE).read_text())
    assert profile["clock"] == "cuda" and profile["steps"] == [3, 4, 5]
    assert profile["kernels_per_step"]["unit"] == "CUDA kernels"
    assert profile["kernels_per_step"]["by_step"] == {"3": 3, "4": 3, "5": 3}
