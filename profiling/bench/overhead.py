"""The profiler's own cost: the trainer's step with the phase timer and sampler on, then off, in alternating rounds."""

import statistics
import tempfile
from contextlib import nullcontext
from functools import partial

from profiling import records
from profiling.bench.figures import Figures, device_name, shape, timed
from profiling.bench.step import step_config, step_runner
from profiling.runtime.gpu_sampler import Sampler
from profiling.runtime.timer import PhaseTimer


def bench_overhead(args, device):
    """One trainer's step with the phase timer and sampler on, then both off, in alternating rounds."""
    cfg, folder = step_config(args, {}), tempfile.mkdtemp()
    phases = records.JsonLines(records.rank_file(folder, records.PHASES_STEM, 0))
    samples = records.JsonLines(records.rank_file(folder, records.SAMPLES_STEM, 0))
    run = step_runner(cfg, device, folder)
    timers = {"on": PhaseTimer(device, sink=phases), "off": PhaseTimer(device, enabled=False)}
    timed(partial(run, timers["off"]), device, warmup=args.warmup, repeats=1)
    times, kind = {"on": [], "off": []}, None
    for _ in range(args.rounds):
        for key, timer in timers.items():
            on = key == "on"
            sampler = Sampler(samples, cfg.gpu_sample_ms, log=lambda m: None, devices=device) if on else nullcontext()
            with sampler:
                times[key].append(timed(partial(run, timer), device, warmup=1, repeats=args.steps))
            timer.flush()
            kind = getattr(sampler, "kind", kind)
    on_ms, off_ms = statistics.median(times["on"]), statistics.median(times["off"])
    result = Figures(
        f"the profiler's own cost at {shape(args)} ({device_name(device)})", ["timers and sampler", "ms/step"]
    )
    result.rows += [
        ["on", f"{on_ms:.2f}"],
        ["off", f"{off_ms:.2f}"],
        ["overhead", f"{100 * (on_ms / off_ms - 1):+.2f}%"],
    ]
    result.notes.append(f"median of {args.rounds} alternating rounds of {args.steps} steps; sampler: {kind}")
    return result
