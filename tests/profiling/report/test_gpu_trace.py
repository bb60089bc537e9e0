"""Holistic Trace Analysis on a real GPU trace shipped in tests/data/gpu_trace (see its README), and on the same
trace with a copy and a second kernel added by hand: every figure follows from the events' times."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from profiling.report import render
from profiling.report.__main__ import main as report
from profiling.report.analysis import analyse
from profiling.report.gpu_trace import breakdowns
from tests.profiling.report.test_report import recorded_gpu_run

TRACE = Path(__file__).resolve().parents[2] / "data" / "gpu_trace" / "backward_thread.json"
KERNEL_US, LAUNCH_US = 45, 10  # the trace's one kernel and its cudaLaunchKernel call
LAUNCH_END, KERNEL_START = 1666149715364374 + LAUNCH_US, 1666149715428509  # their ends and starts, in us


@pytest.fixture
def hta():
    return pytest.importorskip(
        "hta.trace_analysis", reason='needs Holistic Trace Analysis: pip install "irnscope[hta]"'
    )


def test_the_real_trace_s_one_kernel_is_all_of_its_gpu_time(hta):
    found = breakdowns({0: TRACE})
    assert found["temporal"] == [
        {"rank": 0, "span_us": KERNEL_US, "idle_us": 0, "compute_us": KERNEL_US, "non_compute_us": 0}
    ]
    assert found["kernel_types"] == [{"type": "COMPUTATION", "us": KERNEL_US, "share": 1.0}]
    (kernel,) = found["kernels"]
    assert kernel["name"].startswith("void cutlass::Kernel<cutlass_80_tensorop") and kernel["total_us"] == KERNEL_US
    launches = found["launches"][0]
    assert (launches["launches"], launches["cpu_us_mean"], launches["gpu_us_mean"]) == (1, LAUNCH_US, KERNEL_US)
    assert launches["delay_us_median"] == KERNEL_START - LAUNCH_END and launches["late_starts"] == 1


def test_idle_time_and_a_copy_land_in_their_own_shares(hta, tmp_path):
    """After the kernel: 15 us idle, a 20 us device-to-device copy, 20 us idle, a 30 us kernel, each launched
    in the same step: 130 us from the first kernel's start to the last's end, 35 idle, 75 computing, 20 copying."""
    doc = json.loads(TRACE.read_text())
    kernel = next(e for e in doc["traceEvents"] if e["cat"] == "kernel")
    launch = next(e for e in doc["traceEvents"] if e["cat"] == "cuda_runtime")

    def on_cpu(name, ts, dur, correlation):
        return {**launch, "name": name, "ts": ts, "dur": dur, "args": {"correlation": correlation}}

    def on_gpu(cat, name, ts, dur, correlation):
        return {**kernel, "cat": cat, "name": name, "ts": ts, "dur": dur,
                "args": {**kernel["args"], "correlation": correlation, "External id": correlation}}  # fmt: skip

    end = KERNEL_START + KERNEL_US
    doc["traceEvents"] += [
        on_cpu("cudaMemcpyAsync", LAUNCH_END + 10, 4, 1),
        on_gpu("gpu_memcpy", "Memcpy DtoD (Device -> Device)", end + 15, 20, 1),
        on_cpu("cudaLaunchKernel", LAUNCH_END + 20, 4, 2),
        on_gpu("kernel", "void at::native::elementwise_kernel", end + 55, 30, 2),
    ]
    (tmp_path / "trace.json").write_text(json.dumps(doc))
    found = breakdowns({0: tmp_path / "trace.json"})
    assert found["temporal"][0] | {"rank": 0} == {
        "rank": 0, "span_us": 130, "idle_us": 35, "compute_us": 75, "non_compute_us": 20,
    }  # fmt: skip
    shares = {k["type"]: k["share"] for k in found["kernel_types"]}
    assert shares == {"COMPUTATION": pytest.approx(75 / 95, abs=1e-3), "MEMORY": pytest.approx(20 / 95, abs=1e-3)}
    assert [k["total_us"] for k in found["kernels"]] == [45, 30, 20]
    assert found["launches"][0]["launches"] == 3 and found["launches"][0]["cpu_us_mean"] == pytest.approx(6)


def gpu_run_with_a_trace(folder):
    """A recorded H100 run whose --torch-profile window left the shipped trace (a CUDA capture)."""
    recorded_gpu_run(folder)
    shutil.copy(TRACE, folder / "torch_trace.json")
    top = [{"name": "void cutlass::Kernel", "self_ms": KERNEL_US / 1e3, "calls": 1, "share": 1.0}]
    (folder / "torch_profile.json").write_text(json.dumps({"clock": "cuda", "total_ms": KERNEL_US / 1e3, "top": top}))
    return folder


def test_the_report_adds_the_breakdowns_of_a_cuda_capture(hta, in_tmp, capsys):
    gpu_run_with_a_trace(Path("runs/traced"))
    report(["traced"])
    out = " ".join(capsys.readouterr().out.split())
    assert "the GPU trace, by Holistic Trace Analysis" in out
    assert "rank 0: of the 0.04 ms from its first kernel to its last, the GPU was idle 0.0%, computing 100.0%" in out
    assert "rank 0, 1 kernel launch: the call 10.0 us and the kernel 45.0 us on average" in out


def test_without_hta_the_report_says_so_in_one_line(in_tmp, monkeypatch):
    monkeypatch.setitem(sys.modules, "hta.trace_analysis", None)  # as if it were not installed
    run = analyse(gpu_run_with_a_trace(Path("runs/traced")))
    (line,) = render.gpu_trace_lines(run)
    assert (
        line == "GPU trace breakdowns need Holistic Trace Analysis (hta.trace_analysis is missing): "
        'pip install "irnscope[hta]"'
    )


def test_a_cpu_capture_has_no_gpu_trace_to_break_down(in_tmp):
    folder = gpu_run_with_a_trace(Path("runs/cpu"))
    (folder / "torch_profile.json").write_text(json.dumps({"clock": "cpu", "total_ms": 1.0, "top": []}))
    assert analyse(folder)["gpu_trace"] is None
