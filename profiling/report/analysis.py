"""What a run folder says: throughput, the training step's phases, scheduled work, GPU use, how far the
step is from the hardware's floors, the bottleneck, explosions and losses.

`analyse(folder)` returns plain data (the report renders it, --json prints it). It reads files that
may still be growing or were cut short by a crash. The steady-state statistics judge the training step
alone: warm-up steps and steps under a profiler capture are left out, scheduled work (validation,
checkpoints) is taken out of each step's time and reported on its own lines, and the GPU's counters are
those sampled during the steady steps.
"""

import bisect
import json
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, median

from profiling import records
from profiling.records import SCHEDULED_PHASES, STEP_PHASES, read_jsonl
from profiling.report import gpu_trace, roofline
from profiling.report.verdict import MIN_STEADY, bottleneck
from profiling.stats import first_last_min, percentile

# NVML's clock-event reasons that slow the GPU down: software power cap (0x4), hardware slowdown (0x8), software
# and hardware thermal slowdown (0x20, 0x40) and the hardware power brake (0x80). The others are not throttling:
# idle (0x1), application clocks (0x2), sync boost (0x10), display clocks (0x100).
THROTTLING = 0x4 | 0x8 | 0x20 | 0x40 | 0x80
WARMUP_STEPS = 5  # first steps (allocation, autotuning, compilation) left out of the statistics
SCHEDULED_HINT_SHARE = 0.10  # scheduled work above this share of the wall time gets a hint
SCHEDULED_HINTS = {
    "validation": "raise --val-every or validate fewer images (--val-max-images)",
    "checkpoint": "raise --checkpoint-every",
    "capture": "a profiler capture costs this once; shorten --py-spy/--torch-profile windows",
}


def last_per_step(steps):
    """A resumed run may log a step twice; keep the newest record of each step."""
    return sorted({r["step"]: r for r in steps if "step" in r}.values(), key=lambda r: r["step"])


def step_ms(record):
    """The training step's own time: the loop iteration less its scheduled work."""
    return record["wall_ms"] - sum(record.get(p, 0.0) for p in SCHEDULED_PHASES)


def steady(steps, job_starts=(0,)):
    """Steps that show the run's usual speed: not under a py-spy or torch.profiler capture, and not the
    first WARMUP_STEPS of a job (each resumed job allocates, autotunes and compiles again)."""
    warm_up = {s for start in job_starts for s in range(start + 1, start + 1 + WARMUP_STEPS)}  # steps count from 1
    return [r for r in steps if r["step"] not in warm_up and not r.get("captured")]


def phase_stats(steps):
    """Mean, p50, p95 and share of each phase of the training step, and of the step itself."""
    times = [step_ms(r) for r in steps]
    total = mean(times) if times else 0.0
    rows = {}
    for name in STEP_PHASES:
        values = [r.get(name, 0.0) for r in steps]
        rows[name] = {
            "mean_ms": mean(values) if values else 0.0,
            "p50_ms": percentile(values, 0.5),
            "p95_ms": percentile(values, 0.95),
            "share": (mean(values) / total) if total else 0.0,
            "ran": any(name in r for r in steps),  # the codec phase, say, only where a codec runs
        }
    peaks = [r["mem_peak_mib"] for r in steps if "mem_peak_mib" in r]
    return {
        "step_ms": total,
        "step_p50_ms": percentile(times, 0.5),
        "step_p95_ms": percentile(times, 0.95),
        "phases": rows,
        "mem_peak_mib": max(peaks) if peaks else None,
    }


def scheduled_work(steps):
    """Per kind of scheduled work: how often it ran, its total time and its share of the wall time."""
    wall = sum(r["wall_ms"] for r in steps)
    out = {}
    for name in SCHEDULED_PHASES:
        times = [r[name] for r in steps if r.get(name, 0.0) > 0]
        if times:
            share = sum(times) / wall if wall else 0.0
            hint = SCHEDULED_HINTS[name] if share > SCHEDULED_HINT_SHARE else None
            out[name] = {"count": len(times), "total_s": sum(times) / 1e3, "share": share, "hint": hint}
    return out


def during_steady_steps(samples, steps):
    """The samples one rank's sampler took during its steady training steps (`steps`, from steady()) that
    ran no scheduled work: what the GPU does in the training step, without compilation, warm-up,
    validation or checkpoint writes. Records without clocks (older runs) keep every sample."""
    if not all("clock" in s for s in samples) or not any("clock" in r for r in steps):
        return samples
    return inside_steps(samples, steps) or samples


def inside_steps(samples, steps):
    """The samples taken during `steps` (records with clocks) that ran no scheduled work."""
    windows = sorted(
        (r["clock"] - r["wall_ms"] / 1e3, r["clock"])
        for r in steps
        if "clock" in r and not any(r.get(name) for name in SCHEDULED_PHASES)
    )
    starts = [start for start, _ in windows]

    def inside(clock):
        i = bisect.bisect_right(starts, clock) - 1
        return i >= 0 and clock <= windows[i][1]

    return [s for s in samples if "clock" in s and inside(s["clock"])]


def training_gpu_stats(samples, steady_steps, step_time_ms, gpus):
    """gpu_stats of the samples each rank took in its steady steps ({rank: samples}, {rank: steps}); the
    memory peak over every sample, as validation on whole images is often the run's peak."""
    steady = [s for rank, found in samples.items() for s in during_steady_steps(found, steady_steps.get(rank, []))]
    stats = gpu_stats(steady, step_time_ms, gpus)
    if stats["kind"] == "gpu":
        stats["mem_peak_mib"] = max(s["mem_used_mib"] for found in samples.values() for s in found if "util" in s)
    return stats


def gpu_stats(samples, step_time_ms, gpus=1):
    """Utilisation, memory, power and clocks over the samples; energy per step over all `gpus` (one per
    rank of the latest job) at their mean power."""
    gpu = [s for s in samples if "util" in s]
    if gpu:
        power = [s["power_w"] for s in gpu if "power_w" in s]
        clocks = [s["sm_clock_mhz"] for s in gpu if "sm_clock_mhz" in s]
        return {
            "kind": "gpu",
            "devices": sorted({s["gpu"] for s in gpu}),
            "util_mean": mean(s["util"] for s in gpu),
            "under_50_share": sum(s["util"] < 50 for s in gpu) / len(gpu),
            "mem_peak_mib": max(s["mem_used_mib"] for s in gpu),
            "power_mean_w": mean(power) if power else None,
            "energy_per_step_j": mean(power) * gpus * step_time_ms / 1e3 if power else None,
            "gpus": gpus,
            "sm_clock_mean_mhz": mean(clocks) if clocks else None,
            "throttled_share": sum(bool(s.get("throttle", 0) & THROTTLING) for s in gpu) / len(gpu),
            "samples": len(gpu),
        }
    proc = [s for s in samples if "cpu_percent" in s]
    if proc:
        waiting = [s["waiting_percent"] for s in proc if "waiting_percent" in s]
        return {
            "kind": "process",
            "cpu_percent_mean": mean(s["cpu_percent"] for s in proc),
            "waiting_percent_mean": mean(waiting) if waiting else None,
            "rss_peak_mib": max(s["rss_mib"] or 0 for s in proc),
            "samples": len(proc),
        }
    return {"kind": "none"}


def hardware(cfg, env, census, measured_ms, forecast=None):
    """The run's own device against the census: floors, achieved FLOP/s and MFU; forecasts for the
    named GPUs. None without a census (runs made before it existed).

    A run under CUDA graphs (--compile reduce-overhead or max-autotune) replays its kernels without
    launching them one by one: it has no launch floor, here or in the forecasts. MFU counts the model's
    FLOPs (a step's as standard backprop makes them); the floors count what the step runs, recomputation
    included."""
    if not census:
        return None
    device, probe = env.get("device", {}), env.get("probe", {})
    precision, tf32 = cfg.get("precision", "fp32"), env.get("backends", {}).get("conv_tf32", True)
    compile_mode = census.get("compile", cfg.get("compile"))
    graphs = compile_mode in roofline.CUDA_GRAPH_MODES
    launch_us = roofline.launch_cost_us(compile_mode, probe.get("launch_us", roofline.LAUNCH_US))
    peak, source, gpu = roofline.peak(device, precision, tf32, probe.get("matmul_tflops"))
    issue = roofline.issue_floors(forecast, census, precision, tf32)
    if gpu:
        own_issue = next((ms for key, ms in issue.items() if roofline.GPUS[key].capability == gpu.capability), None)
        own = roofline.floors(census, gpu, precision, tf32, launch_us, own_issue)
    else:  # a CPU or an unlisted GPU: its measured matrix-product rate is the compute roof, bandwidth unknown
        own = floors_without_bandwidth(census, peak, launch_us)
    forecast_launch_us = roofline.launch_cost_us(compile_mode)  # the other GPUs' probes are not known
    model = {**census, "flops_per_step": census.get("model_flops_per_step", census["flops_per_step"])}
    own = own | roofline.utilisation(model, measured_ms, peak)
    return {
        "census": census,
        "step_ms": measured_ms,
        "own": own | {"peak_tflops": peak, "peak_source": source, "launch_us": launch_us, "cuda_graphs": graphs},
        "vs_floor": measured_ms / own["floor_ms"] if own.get("floor_ms") else None,
        "forecasts": roofline.forecasts(census, precision, tf32, forecast_launch_us, issue),
        "forecast_launch_us": forecast_launch_us,
    }


def floors_without_bandwidth(census, peak_tflops, launch_us):
    """Compute and launch floors where the memory bandwidth is not known (a CPU)."""
    if not peak_tflops:
        return {}
    ms = {"compute": census["flops_per_step"] / (peak_tflops * 1e12) * 1e3}
    ms["launch"] = census["kernels_per_step"] * launch_us / 1e3
    bound = max(ms, key=ms.get)
    return {f"{k}_ms": v for k, v in ms.items()} | {"bound": bound, "floor_ms": ms[bound], "math": "measured"}


def loss_summary(metrics):
    trained = [r for r in metrics if "loss" in r]
    keys = ("loss", "forw_fit", "forw_ce", "back_rec", "grad_norm")
    if not trained:
        return {}
    k = max(1, min(100, len(trained) // 10))
    out = {key: first_last_min([r.get(key) for r in trained], k) for key in keys}
    out["window"] = k
    vals = [r for r in metrics if "val_psnr_y" in r]
    if vals:
        last = vals[-1]
        out["validation"] = {k2: last[k2] for k2 in last if k2.startswith("val_")} | {"step": last["step"]}
    out["skipped_steps"] = len(metrics) - len(trained)
    return out


def progress(cfg, metrics, logged_steps, step_seconds):
    """Where the run is: its last step, whether it finished, the wall time so far and the time to go (the
    steady step, plus the scheduled work at the rate it has come so far: validations, checkpoints)."""
    last_step = metrics[-1]["step"] if metrics else 0
    steps = cfg.get("steps", 0)
    scheduled_ms = sum(r.get(name, 0.0) for r in logged_steps for name in ("validation", "checkpoint"))
    step_seconds += scheduled_ms / 1e3 / len(logged_steps) if logged_steps else 0.0
    return {
        "last_step": last_step,
        "steps": steps,
        "finished": last_step >= steps,
        "elapsed_s": sum(r["wall_ms"] for r in logged_steps) / 1e3,
        "remaining_s": max(0, steps - last_step) * step_seconds,
    }


def read_json(path):
    """A JSON file of the run folder, or None if it is missing or was cut short by a crash."""
    try:
        return json.loads(Path(path).read_text()) if Path(path).is_file() else None
    except json.JSONDecodeError:
        return None


@dataclass
class RunRecords:
    """What a run folder holds, read once; files may still be growing or were cut short by a crash."""

    folder: Path
    config: dict
    envs: list  # one environment record per job
    metrics: list  # the newest metrics line of each step
    phases: dict  # rank -> the newest phase record of each step
    samples: dict  # rank -> sampler records
    census: dict | None
    forecast: dict | None  # forecast.json, where `profiling.bench forecast --run` wrote one
    torch_profile: dict | None
    explosions: list

    @property
    def env(self):
        """The latest job's environment."""
        return self.envs[-1] if self.envs else {}

    @property
    def job_starts(self):
        return sorted({e.get("start_step", 0) for e in self.envs}) or [0]


def read_run(folder):
    folder = Path(folder)
    return RunRecords(
        folder=folder,
        config=records.read_config(folder),
        envs=records.read_envs(folder),
        metrics=last_per_step(read_jsonl(folder / records.METRICS)),
        phases={r: last_per_step(read_jsonl(p)) for r, p in records.rank_files(folder, records.PHASES_STEM).items()},
        samples={r: read_jsonl(p) for r, p in records.rank_files(folder, records.SAMPLES_STEM).items()},
        census=read_json(folder / records.CENSUS),
        forecast=read_json(folder / records.FORECAST),
        torch_profile=read_json(folder / records.TORCH_PROFILE),
        explosions=read_jsonl(folder / records.EXPLOSIONS),
    )


def analyse(folder):
    """The report's data for a run folder: plain data, as `--json` prints it."""
    run = read_run(folder)
    cfg, env, logged = run.config, run.env, run.phases.get(0, [])
    ranks = {rank: steady(steps, run.job_starts) for rank, steps in run.phases.items()}
    steps = ranks.get(0, [])
    is_steady = len(steps) >= MIN_STEADY
    stats = phase_stats(steps if is_steady else logged)  # a short run: every step, labelled so, and no verdict
    gpu = training_gpu_stats(run.samples, ranks, stats["step_ms"], gpus=env.get("world_size", 1))
    jobs = judged_jobs(run, steps)
    hw = next((job["hardware"] for job in reversed(jobs) if job["hardware"]), None)  # the latest judged job's
    scheduled, device_type = scheduled_work(logged), env.get("device", {}).get("type", "cpu")
    rank_rows = rank_table(ranks) if len(ranks) > 1 else []
    return {
        "run": str(run.folder),
        "config": cfg,
        "env": env,
        "jobs": len(run.envs),
        "steady": is_steady,
        "progress": progress(cfg, run.metrics, logged, stats["step_ms"] / 1e3),
        "throughput": throughput(cfg, stats["step_ms"], steps, logged),
        "phases": stats,
        "compile_s": compile_seconds(logged),
        "scheduled": scheduled,
        "gpu": gpu,
        "census": run.census,
        "hardware": hw,
        "by_job": jobs,
        "verdict": bottleneck(stats, len(steps), scheduled, gpu, device_type, hw, cfg, rank_rows, jobs),
        "ranks": rank_rows,
        "world_size": env.get("world_size", 1),
        "explosions": run.explosions,
        "losses": loss_summary(run.metrics),
        "torch_profile": run.torch_profile,
        "gpu_trace": trace_breakdowns(run.folder, run.torch_profile),
        "captures": captures_in(run.folder),
    }


def trace_breakdowns(folder, torch_profile):
    """Holistic Trace Analysis's breakdowns of the torch.profiler traces where they hold GPU kernels (a capture on
    CUDA), else None."""
    if (torch_profile or {}).get("clock") != "cuda":
        return None
    return gpu_trace.breakdowns(records.rank_files(folder, Path(records.TORCH_TRACE).stem, ".json"))


def jobs_of(envs, steps):
    """[(a job's environment, its steps)]: each job's steps follow its start_step, up to the next job's."""
    envs = envs or [{}]
    starts = [env.get("start_step", 0) for env in envs] + [float("inf")]
    return [(env, [r for r in steps if starts[i] < r["step"] <= starts[i + 1]]) for i, env in enumerate(envs)]


def judged_jobs(run, steady_steps):
    """Each job's steady steps (rank 0's) against that job's own probe: per job, its number, first step, steady
    steps, their mean time, the floors and MFU of that time on its probe (None under MIN_STEADY steps), and the
    process's CPU use during them (a CPU run's samples; None elsewhere)."""
    rows = []
    for n, (env, steps) in enumerate(jobs_of(run.envs, steady_steps), 1):
        ms = mean(step_ms(r) for r in steps) if steps else None
        judged = len(steps) >= MIN_STEADY
        hw = hardware(run.config, env, run.census, ms, run.forecast) if judged else None
        cpu = gpu_stats(inside_steps(run.samples.get(0, []), steps), ms or 0.0) if judged else {}
        rows.append({
            "job": n, "start_step": env.get("start_step", 0), "steady_steps": len(steps), "step_ms": ms,
            "hardware": hw and hw | {"job": n}, "cpu_percent_mean": cpu.get("cpu_percent_mean"),
        })  # fmt: skip
    return rows


def compile_seconds(logged):
    """The seconds torch.compile took to trace and compile each job's first step (phases.jsonl's compile_ms)."""
    return [r["compile_ms"] / 1e3 for r in logged if "compile_ms" in r]


def throughput(cfg, step_ms, steady_steps, logged):
    """Iterations and images per second of the steady step, and how many steps that is measured over."""
    step_s = step_ms / 1e3
    return {
        "it_per_s": 1 / step_s if step_s else 0.0,
        "images_per_s": cfg.get("batch_size", 0) / step_s if step_s else 0.0,
        "timed_steps": len(steady_steps),
        "captured_steps": sum(bool(r.get("captured")) for r in logged),
    }


def captures_in(folder):
    """The capture files in a run folder: py-spy's, then torch.profiler's traces."""
    pyspy = sorted(p.name for p in folder.glob(f"{records.PYSPY_PREFIX}.*"))
    return pyspy + sorted(p.name for p in folder.glob(records.TORCH_TRACE.replace(".json", "*.json")))


def rank_table(ranks):
    """Per rank: step time, data wait, backward (which holds DDP's gradient all-reduce); stragglers flagged."""
    rows = []
    for rank, steps in ranks.items():
        if not steps:
            continue
        row = {
            "rank": rank,
            "step_ms": mean(step_ms(r) for r in steps),
            "data_ms": mean(r.get("data", 0.0) for r in steps),
            "backward_ms": mean(r.get("backward", 0.0) for r in steps),
            "work_ms": mean(sum(r.get(k, 0.0) for k in ("data", "h2d", "forward", "loss")) for r in steps),
        }
        if any("allreduce_ms" in r for r in steps):
            row["allreduce_ms"] = mean(r.get("allreduce_ms", 0.0) for r in steps)
            row["allreduce_clock"] = next((r["allreduce_clock"] for r in steps if "allreduce_clock" in r), "host")
        rows.append(row)
    # Every rank waits for the slowest in the backward's all-reduce, so the step time is shared; a
    # straggler shows in the work before it: data, copy, forward and loss.
    typical = median(r["work_ms"] for r in rows) if rows else 0.0
    for row in rows:
        row["straggler"] = typical > 0 and row["work_ms"] > 1.1 * typical
    return rows
