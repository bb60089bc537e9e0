"""Per-phase step timings: `with timer.phase("forward"): ...`, then `timer.end_step(step)`.

Host phases (waiting for data, logging, validation, checkpoints) are timed with perf_counter. Device
phases on CUDA are timed with CUDA events that are read back one step later: the host waits on the
previous step's last event (a synchronize on that event, not on the device), which in steady state has
completed already, and which bounds how far the host runs ahead of the GPU to one step, as the step's
own late values do (engine/training/step.py). Every step yields one record: wall time of the loop
iteration, each phase in ms, `other` (the rest) and, on CUDA, the step's peak of allocated memory and the
memory the allocator holds.

On CUDA each step ("step N") and each phase inside it can also be an NVTX range, so that an Nsight Systems
timeline shows them (`ranges`: torch.cuda.nvtx, from nvtx_ranges()). A range costs a host call at each end
and nothing on the GPU; `python -m profiling.bench overhead` measures it against the step. A CPU run never
has ranges: NVTX is CUDA's.
"""

import time
from contextlib import contextmanager

import torch

from profiling.records import PHASES

# codec: the host encodes between a copy off the GPU and one back; events around it time the stream's wait
DEVICE_PHASES = ("h2d", "forward", "codec", "loss", "backward", "optimizer")
# Phases without an NVTX range: a capture starts or stops Nsight's capture range inside its phase, which would
# cut a range around it in two.
UNMARKED = ("capture",)


def nvtx_ranges(device, wanted):
    """torch.cuda.nvtx where ranges are `wanted` and the device is a CUDA GPU; None elsewhere (no CUDA call)."""
    return torch.cuda.nvtx if wanted and torch.device(device).type == "cuda" else None


class PhaseTimer:
    def __init__(self, device, sink=None, enabled=True, clock=time.perf_counter, ranges=None):
        """`ranges`: what marks each step and phase as an NVTX range (range_push, range_pop), or None."""
        self.cuda = torch.device(device).type == "cuda"
        self.sink, self.enabled, self.clock = sink, enabled, clock
        self.ranges = ranges if enabled else None
        self.step_range = False  # a step's range is open (begin_step), for end_step to close
        self.spans, self.open, self.pending, self.notes = [], [], None, {}
        self.step_start = self.clock()

    @contextmanager
    def phase(self, name):
        """Time a phase; a phase opened inside another is subtracted from it, so phases never overlap."""
        if not self.enabled:
            yield
            return
        device = self.cuda and name in DEVICE_PHASES
        parent = self.open[-1] if self.open else None
        self.open.append(name)
        marked = self.ranges is not None and name not in UNMARKED
        if marked:
            self.ranges.range_push(name)
        begin = _event() if device else self.clock()
        try:
            yield
        finally:
            self.open.pop()
            if marked:
                self.ranges.range_pop()
            measure = (begin, _event()) if device else (self.clock() - begin) * 1e3
            self.spans.append((name, parent, measure))

    def begin_step(self, step):
        """Step `step` begins: its NVTX range opens, for end_step to close."""
        if self.ranges is not None:
            self.ranges.range_push(f"step {step}")
            self.step_range = True

    def note(self, name, ms, clock=None):
        """A figure that overlaps the phases (e.g. all-reduce during backward): recorded as NAME_ms, not
        summed into the step; `clock` says whose clock measured it (NAME_clock)."""
        if self.enabled:
            self.notes[f"{name}_ms"] = self.notes.get(f"{name}_ms", 0.0) + ms
            if clock:
                self.notes[f"{name}_clock"] = clock

    def end_step(self, step, captured=False):
        """Close the step (`captured`: a profiler ran during it); returns the record completed now (the
        previous step's on CUDA), or None."""
        if not self.enabled:
            return None
        if self.step_range:
            self.ranges.range_pop()
            self.step_range = False
        now = self.clock()
        # "clock": the step's end on the clock the sampler stamps its samples with, to match them to steps
        record = {"step": step, "wall_ms": (now - self.step_start) * 1e3, "clock": round(time.monotonic(), 3)}
        record |= self.notes | ({"captured": True} if captured else {})
        closed = (record, self.spans)
        self.step_start, self.spans, self.notes = now, [], {}
        if not self.cuda:
            return self._emit(_resolve(*closed))
        record.update(memory_of_step())
        done, self.pending = self.pending, closed
        return self._emit(_resolve(*done)) if done else None

    def flush(self):
        """Emit the last step still waiting for its CUDA events (at the end of a run)."""
        done, self.pending = self.pending, None
        return self._emit(_resolve(*done)) if done else None

    def _emit(self, record):
        if self.sink is not None:
            self.sink.write(record)
        return record


def memory_of_step():
    """The step's peak of allocated memory and what the caching allocator holds, in MiB (host-side
    counters: no sync); the peak is reset for the next step."""
    peak, reserved = torch.cuda.max_memory_allocated(), torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    return {"mem_peak_mib": round(peak / 2**20, 1), "mem_reserved_mib": round(reserved / 2**20, 1)}


def _event():
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _resolve(record, spans):
    """Exclusive time per phase; `other` takes whatever the named phases leave of the wall time."""
    for name, parent, measure in spans:
        if not isinstance(measure, float):
            measure[1].synchronize()  # a step-old event: long finished in steady state
            measure = measure[0].elapsed_time(measure[1])
        record[name] = record.get(name, 0.0) + measure
        if parent is not None:
            record[parent] = record.get(parent, 0.0) - measure
    named = sum(record.get(k, 0.0) for k in PHASES if k != "other")
    record["other"] = max(record.get("other", 0.0), record["wall_ms"] - named)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
