"""Captures over a window of training steps: py-spy on the trainer itself, and torch.profiler.

`Captures.at_step(step)` is called before every step; a capture starts at its START step and stops
before its STOP step (so START:STOP records STOP - START steps).
"""

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from profiling import records
from profiling.flamegraph import convert

PTRACE_FIX = (
    "py-spy could not attach to the trainer (ptrace not permitted): run as root, or allow it with "
    "'sudo sysctl kernel.yama.ptrace_scope=0', or in a container add '--cap-add SYS_PTRACE'"
)


def allow_tracing_by_children():
    """Let a child process (py-spy) ptrace us under Yama's default scope; a no-op elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_ptracer, any_process = 0x59616D61, ctypes.c_ulong(-1)
        libc.prctl(pr_set_ptracer, any_process, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def py_spy_executable():
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else "py-spy"


class PySpyCapture:
    """One py-spy recorder attached to this process; its raw stacks become speedscope JSON and an SVG."""

    name = "py-spy"
    RATE_HZ = 100

    def __init__(self, folder, log, native=True):
        self.folder, self.log, self.proc, self.native = Path(folder), log, None, native
        self.raw = self.folder / f"{records.PYSPY_PREFIX}.collapsed.txt"

    def start(self):
        allow_tracing_by_children()
        native = ["--native"] if self.native and self._native_works() else []
        cmd = [
            py_spy_executable(),
            "record",
            "--pid",
            str(os.getpid()),
            "--format",
            "raw",
            "-o",
            str(self.raw),
            "--rate",
            str(self.RATE_HZ),
            *native,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.5)  # py-spy needs a moment to attach; a failure to attach shows up here
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode(errors="replace").strip()
            self.log(
                PTRACE_FIX
                if "ermission" in err or "ptrace" in err.lower()
                else f"py-spy failed: {err.splitlines()[-1] if err else 'no output'}"
            )
            self.proc = None
            return False
        return True

    def _native_works(self):
        """--native needs py-spy's unwinder for this platform: try it on one dump."""
        try:
            probe = subprocess.run(
                [py_spy_executable(), "dump", "--pid", str(os.getpid()), "--native"], capture_output=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return probe.returncode == 0

    def stop(self):
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.proc = None
        if self.raw.is_file():
            speedscope, svg = (self.folder / f"{records.PYSPY_PREFIX}.{kind}" for kind in ("speedscope.json", "svg"))
            samples = convert(self.raw, speedscope, svg, self.RATE_HZ)
            self.log(f"py-spy: {samples} samples -> {speedscope.name} (open in speedscope.app), {svg.name}")


class TorchProfileCapture:
    """torch.profiler over the window: a Chrome trace with memory, and the top kernels by time."""

    name = "torch.profiler"

    def __init__(self, folder, device, log):
        self.folder, self.log = Path(folder), log
        self.cuda = torch.device(device).type == "cuda"
        self.profiler = None

    def start(self):
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities, profile_memory=True, record_shapes=True)
        self.profiler.__enter__()
        return True

    def stop(self):
        if self.profiler is None:
            return
        if self.cuda:
            torch.cuda.synchronize()
        self.profiler.__exit__(None, None, None)
        self.profiler.export_chrome_trace(str(self.folder / records.TORCH_TRACE))
        top = top_kernels(self.profiler.key_averages(), self.cuda)
        (self.folder / records.TORCH_PROFILE).write_text(json.dumps(top, indent=1) + "\n")
        self.profiler = None


def top_kernels(averages, cuda, limit=25):
    """The ops (CPU) or kernels (CUDA) with the most self time, with their share of the total."""
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = [(e.key, getattr(e, attr, 0.0), e.count) for e in averages]
    total = sum(t for _, t, _ in rows) or 1.0
    rows.sort(key=lambda r: -r[1])
    return {
        "clock": "cuda" if cuda else "cpu",
        "total_ms": total / 1e3,
        "top": [{"name": k, "self_ms": t / 1e3, "calls": n, "share": t / total} for k, t, n in rows[:limit] if t > 0],
    }


class Captures:
    def __init__(self, windows, log):
        self.windows, self.log = windows, log  # [(capture, (start, stop))]
        self.running = []

    def at_step(self, step):
        """Start and stop captures before `step`; whether a capture touched this step (its timing is not typical)."""
        touched = bool(self.running)
        for capture, (start, stop) in self.windows:
            if step == start:
                self.log(f"{capture.name}: recording steps {start}..{stop - 1}")
                if capture.start():
                    self.running.append(capture)
                    touched = True
            if step == stop and capture in self.running:
                self.finish(capture)
        return touched

    def finish(self, capture):
        capture.stop()
        self.running.remove(capture)
        self.log(f"{capture.name}: capture written")

    def close(self):
        for capture in list(self.running):
            self.finish(capture)
