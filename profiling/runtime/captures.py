"""Captures over a window of training steps: py-spy on the trainer itself, torch.profiler, and Nsight Systems'
capture range (cudaProfilerStart/Stop).

`Captures.at_step(step)` is called before every step. A window START:STOP records steps START..STOP-1;
a capture with a lead (torch.profiler's warm-up) starts that many steps before START, so that its own
start-up (CUPTI and allocator initialisation, first-call autotuning) falls on steps that are not recorded.
Every capture stops before step STOP. at_step tells the loop whether a capture touched the step (its
timing is not typical): every step from the capture's first (warm-up included) to STOP.

torch.profiler's files are per rank: torch_trace.json and torch_profile.json on rank 0,
torch_trace.rankN.json and torch_profile.rankN.json on rank N (see rank_name).
"""

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from bisect import bisect_right
from pathlib import Path

import torch

from profiling import records
from profiling.runtime.flamegraph import convert
from profiling.stats import counted

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
    lead = 0  # starts at its window's first step

    def __init__(self, folder, log, native=True):
        self.folder, self.log, self.proc, self.native = Path(folder), log, None, native
        self.raw = self.folder / f"{records.PYSPY_PREFIX}.collapsed.txt"
        self.said = self.folder / f"{records.PYSPY_PREFIX}.log"  # py-spy's own output, written as it comes

    def start(self, step=None, window=None):
        """Attach py-spy; False (with the reason logged) if it cannot."""
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
        try:
            # into a file, not a pipe: a pipe nobody reads while py-spy records would fill up and stall it
            with open(self.said, "wb") as said:
                self.proc = subprocess.Popen(cmd, stdout=said, stderr=subprocess.STDOUT)
        except OSError as err:
            self.log(f"py-spy cannot run ({err.strerror}: {cmd[0]}); pip install py-spy. Training goes on uncaptured")
            return False
        time.sleep(0.5)  # py-spy needs a moment to attach; a failure to attach shows up here
        if self.proc.poll() is not None:
            err = self.said.read_text(errors="replace").strip()
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

    def step(self, step):
        """py-spy samples on its own clock: nothing to do per step."""

    def stop(self):
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        ended_early = proc.poll() is not None  # py-spy died during the window
        if not ended_early:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output and exits
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not self.raw.is_file():
            why = "it ended before the window did" if ended_early else "it wrote no stacks"
            said = self.said.read_text(errors="replace").strip().splitlines() if self.said.is_file() else []
            last = f": {said[-1]}" if said else ""
            self.log(f"py-spy: nothing recorded ({why}, exit code {proc.returncode}{last}); training goes on")
            return
        speedscope, svg = (self.folder / f"{records.PYSPY_PREFIX}.{kind}" for kind in ("speedscope.json", "svg"))
        samples = convert(self.raw, speedscope, svg, self.RATE_HZ)
        self.log(f"py-spy: {counted(samples, 'sample')} -> {speedscope.name} (open in speedscope.app), {svg.name}")


class NsysCapture:
    """Nsight Systems' capture range around a window's steps: cudaProfilerStart before its first step and
    cudaProfilerStop before its STOP step, so that

        nsys profile --capture-range=cudaProfilerApi --capture-range-end=stop python -m engine.train ... --nsys 100:110

    records steps 100..109 and nothing else. The GPU is synchronised at both ends, so that the window holds
    its own steps' kernels only and all of them. Each rank brackets its own steps (nsys records every process
    it starts). CUDA only: `cuda` is torch.cuda, or a stand-in in the tests."""

    name = "nsys"
    lead = 0

    def __init__(self, device, cuda=torch.cuda):
        self.device, self.cuda = torch.device(device), cuda

    def start(self, step=None, window=None):
        self.cuda.synchronize(self.device)  # the steps before the window finish outside it
        self.cuda.profiler.start()
        return True

    def step(self, step):
        """The capture range covers every step until stop: nothing to do per step."""

    def stop(self):
        self.cuda.synchronize(self.device)  # the window's last kernels finish inside it
        self.cuda.profiler.stop()


def rank_name(name, rank):
    """A per-rank capture file: the run folder's `name` on rank 0, NAME.rankN.EXT on rank N (torch_trace.rank3.json)."""
    if rank == 0:
        return name
    path = Path(name)
    return f"{path.stem}.rank{rank}{path.suffix}"


STEP_PREFIX = "ProfilerStep#"  # torch.profiler's annotation of each step it was told of (profiler.step())
STEP_ROW = "ProfilerStep"  # and its rows in key_averages (ProfilerStep*): a step's whole time, not an op's


class TorchProfileCapture:
    """torch.profiler over a window of steps, on a schedule: `wait` idle steps and `warmup` traced-but-discarded steps
    before the window, then the window's steps recorded. Writes a Chrome trace with memory, and torch_profile.json:
    the top ops (CPU) or kernels (CUDA) by self time, and the device kernels launched per recorded step (on a CPU
    run, the outermost aten ops per step, labelled as such)."""

    name = "torch.profiler"

    def __init__(self, folder, device, log, rank=0, warmup=1, wait=0):
        self.folder, self.log, self.rank = Path(folder), log, rank
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.warmup, self.wait = warmup, wait
        self.lead = wait + warmup  # steps before the window's first that the profiler starts
        self.trace_path = self.folder / rank_name(records.TORCH_TRACE, rank)
        self.profile_path = self.folder / rank_name(records.TORCH_PROFILE, rank)
        self.profiler = None

    def start(self, step, window):
        """Start the profiler before `step`, recording the window's steps (start, stop); the steps between `step` and
        the window's start are its wait and warm-up (fewer than asked where the loop began later than that)."""
        start, stop = window
        ahead = max(start - step, 0)
        warmup = min(self.warmup, ahead)
        self.first, self.last, self.window = step, step, (max(start, step), stop)
        self.schedule = {"wait": ahead - warmup, "warmup": warmup, "active": stop - self.window[0]}
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with warnings.catch_warnings():
            # A window at the loop's first step has no room to warm up; the steps recorded are still the window's.
            warnings.filterwarnings("ignore", message="Profiler won't be using warmup")
            schedule = torch.profiler.schedule(**self.schedule, repeat=1)
        profiler = torch.profiler.profile(
            activities=activities,
            schedule=schedule,
            on_trace_ready=self._write,
            profile_memory=True,
            record_shapes=True,
        )
        try:
            profiler.start()
        except Exception as err:  # another profiler already running, no CUPTI: the run goes on without a capture
            self.log(f"{self.name}: could not start ({type(err).__name__}: {err})")
            return False
        self.profiler = profiler
        return True

    def step(self, step):
        """Step `step` begins: the profiler moves on along its schedule."""
        self.last = step
        self.profiler.step()

    def stop(self):
        """Before the window's STOP step (or when the run ends early): the recorded steps are written."""
        if self.profiler is None:
            return
        if self.cuda:
            torch.cuda.synchronize(self.device)  # the last step's kernels finish inside the capture
        profiler, self.profiler = self.profiler, None
        profiler.stop()  # a schedule still in its wait or warm-up records nothing, and _write is not called
        if self.last < self.window[0]:
            self.log(f"{self.name}: stopped at step {self.last + 1}, before the first recorded step; nothing written")

    def recorded_steps(self):
        return list(range(self.window[0], min(self.last + 1, self.window[1])))

    def _write(self, profiler):
        try:
            profiler.export_chrome_trace(str(self.trace_path))
            events = json.loads(self.trace_path.read_text())
            events = events.get("traceEvents", []) if isinstance(events, dict) else events
            summary = top_kernels(profiler.key_averages(), self.cuda)
            steps = self.recorded_steps()
            summary.update(
                rank=self.rank,
                steps=steps,
                schedule={**self.schedule, "first_step": self.first},
                kernels_per_step=launches_per_step(events, self.cuda, self.first, steps),
            )
            records.write_json(self.profile_path, summary)
        except Exception as err:  # a failed capture must not stop the training run
            self.log(f"{self.name}: writing the capture failed ({type(err).__name__}: {err})")
            return
        per_step = summary["kernels_per_step"]
        self.log(
            f"{self.name}: steps {steps[0]}..{steps[-1]} -> {self.trace_path.name} (open in ui.perfetto.dev), "
            f"{self.profile_path.name}; {per_step['mean']:.1f} {per_step['unit']} per step"
        )


def top_kernels(averages, cuda, limit=25):
    """The ops (CPU) or kernels (CUDA) with the most self time, with their share of the total."""
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = [(e.key, getattr(e, attr, 0.0), e.count) for e in averages if not e.key.startswith(STEP_ROW)]
    total = sum(t for _, t, _ in rows) or 1.0
    rows.sort(key=lambda r: -r[1])
    return {
        "clock": "cuda" if cuda else "cpu",
        "total_ms": total / 1e3,
        "top": [{"name": k, "self_ms": t / 1e3, "calls": n, "share": t / total} for k, t, n in rows[:limit] if t > 0],
    }


def launches_per_step(events, cuda, first_step, steps):
    """What one recorded step launched, from a Chrome trace's events.

    CUDA: every kernel event, assigned to the step during which the CPU launched it (its launch call, matched by
    correlation id; the kernel's own start where the launch is missing). CPU: every outermost aten op (one that no
    other aten op on its thread contains: aten::linear counts, the aten::mm inside it does not), by its start.
    Steps are torch.profiler's ProfilerStep#N spans, N counted from `first_step`. Returns {"unit", "note", "mean",
    "by_step": {step: count}}; without step spans, only the mean (the total over `steps`)."""
    spans = sorted(
        (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)), first_step + int(e["name"][len(STEP_PREFIX) :]))
        for e in events
        if e.get("ph") == "X" and str(e.get("name", "")).startswith(STEP_PREFIX)
    )
    if cuda:
        unit, note = "CUDA kernels", "kernel events in the capture, by the step that launched them"
        launched = {
            e["args"]["correlation"]: float(e["ts"])
            for e in events
            if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})
        }
        times = [
            launched.get(e.get("args", {}).get("correlation"), float(e["ts"]))
            for e in events
            if e.get("cat") == "kernel" and e.get("ph") == "X"
        ]
    else:
        unit, note = "aten ops", "a CPU run launches no device kernels: outermost aten ops per step instead"
        times = _outermost_aten_starts(events)
    by_step = {step: 0 for _, _, step in spans if step in steps}
    if by_step:
        starts = [begin for begin, _, _ in spans]
        for t in times:
            i = bisect_right(starts, t) - 1
            if i >= 0 and t <= spans[i][1] and spans[i][2] in by_step:
                by_step[spans[i][2]] += 1
        mean = sum(by_step.values()) / len(by_step)
    else:
        mean = len(times) / max(len(steps), 1)
    return {"unit": unit, "note": note, "mean": mean, "by_step": {str(k): v for k, v in sorted(by_step.items())}}


def _outermost_aten_starts(events):
    ops = sorted(
        (e.get("pid"), e.get("tid"), float(e["ts"]), -float(e.get("dur", 0)))
        for e in events
        if e.get("ph") == "X" and e.get("cat") == "cpu_op" and str(e.get("name", "")).startswith("aten::")
    )
    starts, thread, end = [], None, float("-inf")
    for pid, tid, ts, neg_dur in ops:
        if (pid, tid) != thread:
            thread, end = (pid, tid), float("-inf")
        if ts >= end:  # not inside the previous outermost op of this thread
            starts.append(ts)
            end = ts - neg_dur
    return starts


class Captures:
    """The run's capture windows, [(capture, (start, stop))], started and stopped by at_step before each step.

    A capture never ends a run: whatever one raises while it starts, steps or stops is one line, and that
    capture is dropped while training goes on."""

    def __init__(self, windows, log):
        self.windows, self.log = windows, log
        self.running, self.tried = [], set()

    def busy(self, step):
        """Whether a capture starts, runs or stops at `step` (the loop times only such steps' capture work)."""
        return bool(self.running) or any(
            start - capture.lead <= step <= stop for capture, (start, stop) in self.windows
        )

    def at_step(self, step):
        """Start and stop captures before `step`; whether a capture touched this step (its timing is not typical)."""
        touched = bool(self.running)
        for n, (capture, (start, stop)) in enumerate(self.windows):
            if capture in self.running:
                if step >= stop:
                    self.finish(capture)
                else:
                    self.safely(capture, "step", capture.step, step)
            elif n not in self.tried and start - capture.lead <= step <= start:
                self.tried.add(n)  # one attempt per window: a capture that cannot start is not retried each step
                ahead = f" (warming up from step {step})" if step < start else ""
                self.log(f"{capture.name}: recording steps {start}..{stop - 1}{ahead}")
                if self.safely(capture, "start", capture.start, step, (start, stop)):
                    self.running.append(capture)
                    touched = True
        return touched

    def safely(self, capture, action, call, *args):
        """call(*args); a failure is one line and drops the capture (False), never the run."""
        try:
            return call(*args)
        except Exception as err:  # whatever a profiler or py-spy raises, the training goes on
            self.log(f"{capture.name}: failed to {action} ({type(err).__name__}: {err}); training goes on uncaptured")
            if capture in self.running:
                self.running.remove(capture)
            return False

    def finish(self, capture):
        self.safely(capture, "stop", capture.stop)  # each capture says what it wrote
        if capture in self.running:
            self.running.remove(capture)

    def close(self):
        for capture in list(self.running):
            self.finish(capture)
