"""The profiler's own cost: the trainer's step with the phase timer and sampler off, then on, in alternating
rounds; on CUDA also with each step and phase an NVTX range (--nvtx).

NVTX ranges stay on by default while they cost under NVTX_BUDGET of a step, as measured here on a GPU (the
note says which side of it they fall). A CPU run has no NVTX ranges (they are CUDA's), so a CPU has nothing
to measure.
"""

import statistics
import tempfile
from contextlib import nullcontext
from functools import partial

from profiling import records
from profiling.bench.figures import Figures, device_name, shape, timed
from profiling.bench.step import step_config, step_runner
from profiling.runtime.gpu_sampler import Sampler
from profiling.runtime.timer import PhaseTimer, nvtx_ranges
from profiling.stats import counted

NVTX_BUDGET = 0.01  # of a step: NVTX ranges cost less, or --nvtx is off by default


def bench_overhead(args, device):
    """Milliseconds per step of each profiler setting, the median of alternating rounds, and what each adds."""
    with tempfile.TemporaryDirectory(prefix="irnscope-bench-overhead-") as folder:  # the records it writes
        return overhead_in(folder, args, device)


def overhead_in(folder, args, device):
    cfg = step_config(args, {})
    phases = records.JsonLines(records.rank_file(folder, records.PHASES_STEM, 0))
    samples = records.JsonLines(records.rank_file(folder, records.SAMPLES_STEM, 0))
    run = step_runner(cfg, device, folder)
    timers = {"off": PhaseTimer(device, enabled=False), "timers and sampler": PhaseTimer(device, sink=phases)}
    if ranges := nvtx_ranges(device, True):
        timers["+ NVTX ranges"] = PhaseTimer(device, sink=phases, ranges=ranges)
    timed(partial(run, timers["off"]), device, warmup=args.warmup, repeats=1)
    times, kind = {key: [] for key in timers}, None
    for _ in range(args.rounds):
        for key, timer in timers.items():
            sampler = Sampler(samples, cfg.gpu_sample_ms, log=lambda m: None, devices=device) if timer.enabled else None
            with sampler or nullcontext():
                times[key].append(timed(partial(run, timer), device, warmup=1, repeats=args.steps))
            timer.flush()
            kind = getattr(sampler, "kind", kind)
    ms = {key: statistics.median(found) for key, found in times.items()}
    result = Figures(
        f"the profiler's own cost at {shape(args)} ({device_name(device)})", ["profiler", "ms/step", "added"]
    )
    previous = None
    for key, value in ms.items():  # each setting adds to the one before it
        result.rows.append([key, f"{value:.2f}", f"{100 * (value / previous - 1):+.2f}%" if previous else ""])
        previous = value
    rounds = f"{counted(args.rounds, 'alternating round')} of {counted(args.steps, 'step')}"
    result.notes.append(f"median of {rounds}; sampler: {kind}")
    result.notes.append(nvtx_note(ms))
    return result


def nvtx_note(ms):
    if "+ NVTX ranges" not in ms:
        return "NVTX ranges: CUDA only (a CPU run has none), nothing to measure on this device"
    cost = ms["+ NVTX ranges"] / ms["timers and sampler"] - 1
    side = "under" if cost < NVTX_BUDGET else "over"
    return f"NVTX ranges cost {cost:+.2%} of a step: {side} the {NVTX_BUDGET:.0%} that keeps --nvtx on by default"
