"""What a run folder says: throughput, phase shares, GPU use, the bottleneck, explosions and losses.

`analyse(folder)` returns plain data (the report renders it, --json prints it). It reads files that
may still be growing or were cut short by a crash.
"""

import json
from pathlib import Path
from statistics import mean, median

from profiling import records
from profiling.records import PHASES, read_jsonl
from profiling.stats import first_last_min, percentile

WARMUP_STEPS = 5  # first steps (allocation, autotuning, compilation) left out of the statistics


def last_per_step(records):
    """A resumed run may log a step twice; keep the newest record of each step."""
    return sorted({r["step"]: r for r in records if "step" in r}.values(), key=lambda r: r["step"])


def steady(records):
    """Steps that show the run's usual speed: neither warm-up nor under a py-spy or torch.profiler capture."""
    records = records[WARMUP_STEPS:] if len(records) > 2 * WARMUP_STEPS else records
    return [r for r in records if not r.get("captured")]


def phase_stats(records):
    walls = [r["wall_ms"] for r in records]
    total = mean(walls) if walls else 0.0
    rows = {}
    for name in PHASES:
        values = [r.get(name, 0.0) for r in records]
        rows[name] = {
            "mean_ms": mean(values) if values else 0.0,
            "p50_ms": percentile(values, 0.5),
            "p95_ms": percentile(values, 0.95),
            "share": (mean(values) / total) if total else 0.0,
        }
    return {
        "step_ms": total,
        "step_p50_ms": percentile(walls, 0.5),
        "step_p95_ms": percentile(walls, 0.95),
        "phases": rows,
    }


def gpu_stats(samples, step_ms):
    gpu = [s for s in samples if "util" in s]
    if gpu:
        power = [s["power_w"] for s in gpu if "power_w" in s]
        return {
            "kind": "gpu",
            "devices": sorted({s["gpu"] for s in gpu}),
            "util_mean": mean(s["util"] for s in gpu),
            "under_50_share": sum(s["util"] < 50 for s in gpu) / len(gpu),
            "mem_peak_mib": max(s["mem_used_mib"] for s in gpu),
            "power_mean_w": mean(power) if power else None,
            "energy_per_step_j": mean(power) * step_ms / 1e3 if power else None,
            "sm_clock_mean_mhz": mean(s["sm_clock_mhz"] for s in gpu if "sm_clock_mhz" in s)
            if any("sm_clock_mhz" in s for s in gpu)
            else None,
            "throttled_share": sum(bool(s.get("throttle", 0) & ~1) for s in gpu) / len(gpu),  # bit 0 is 'idle'
            "samples": len(gpu),
        }
    proc = [s for s in samples if "cpu_percent" in s]
    if proc:
        return {
            "kind": "process",
            "cpu_percent_mean": mean(s["cpu_percent"] for s in proc),
            "rss_peak_mib": max(s["rss_mib"] or 0 for s in proc),
            "samples": len(proc),
        }
    return {"kind": "none"}


def verdict(phases, gpu, device_type):
    """The bottleneck in plain words: (label, evidence, what to try next)."""
    share = {k: v["share"] for k, v in phases["phases"].items()}
    if share["data"] > 0.15:
        return (
            "data-bound",
            f"the training loop waited for data {share['data']:.0%} of each step",
            "raise --workers, or lower the cost of each crop (the images are decoded once, into memory)",
        )
    if share["other"] > 0.2:
        return (
            "overhead-bound",
            f"logging, validation and checkpoints took {share['other']:.0%} of each step",
            "raise --val-every and --checkpoint-every, or validate on fewer images (--val-max-images)",
        )
    if device_type == "cuda" and gpu.get("kind") == "gpu" and gpu["util_mean"] < 80:
        return (
            "host-bound",
            f"the GPU was busy only {gpu['util_mean']:.0f}% of the time ({gpu['under_50_share']:.0%} of samples "
            "under 50%) although data was ready",
            "the CPU cannot issue kernels fast enough: try --compile reduce-overhead (CUDA graphs), --fast-kernels, "
            "or a larger batch",
        )
    compute = share["forward"] + share["backward"] + share["loss"]
    where = "the GPU" if device_type == "cuda" else "the CPU"
    return (
        "compute-bound",
        f"forward, loss and backward took {compute:.0%} of each step on {where}",
        "try --fast-kernels with --compile, --precision bf16"
        if device_type == "cuda"
        else "train on a CUDA GPU; on the CPU, smaller crops or fewer blocks",
    )


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
        out["validation"] = {k2: vals[-1][k2] for k2 in vals[-1] if k2.startswith("val_")} | {
            "step": vals[-1]["step"] + 1
        }
    out["skipped_steps"] = len(metrics) - len(trained)
    return out


def analyse(folder):
    folder = Path(folder)
    cfg = records.read_config(folder)
    envs = records.read_envs(folder)
    env = envs[-1] if envs else {}
    metrics = last_per_step(read_jsonl(folder / records.METRICS))
    logged = {rank: last_per_step(read_jsonl(p)) for rank, p in records.rank_files(folder, records.PHASES_STEM).items()}
    ranks = {rank: steady(records) for rank, records in logged.items()}
    phases = ranks.get(0, [])
    stats = phase_stats(phases)
    samples = [s for p in records.rank_files(folder, records.SAMPLES_STEM).values() for s in read_jsonl(p)]
    gpu = gpu_stats(samples, stats["step_ms"])
    device_type = env.get("device", {}).get("type", "cpu")
    last_step = metrics[-1]["step"] + 1 if metrics else 0
    step_s = stats["step_ms"] / 1e3
    label, evidence, next_step = (
        verdict(stats, gpu, device_type)
        if phases
        else ("unknown", "no step timings yet", "let the run take a few steps")
    )
    world = env.get("world_size", 1)
    return {
        "run": str(folder),
        "config": cfg,
        "env": env,
        "jobs": len(envs),
        "progress": {"last_step": last_step, "steps": cfg.get("steps"), "finished": last_step >= cfg.get("steps", 0)},
        "throughput": {
            "it_per_s": 1 / step_s if step_s else 0.0,
            "images_per_s": cfg.get("batch_size", 0) / step_s if step_s else 0.0,
            "remaining_s": (cfg.get("steps", 0) - last_step) * step_s,
            "timed_steps": len(phases),
            "captured_steps": sum(bool(r.get("captured")) for r in logged.get(0, [])),
        },
        "phases": stats,
        "gpu": gpu,
        "verdict": {"label": label, "evidence": evidence, "next": next_step},
        "ranks": rank_table(ranks) if len(ranks) > 1 else [],
        "world_size": world,
        "explosions": read_jsonl(folder / records.EXPLOSIONS),
        "losses": loss_summary(metrics),
        "torch_profile": read_torch_profile(folder),
        "captures": sorted(p.name for p in folder.glob(f"{records.PYSPY_PREFIX}.*"))
        + sorted(p.name for p in folder.glob(records.TORCH_TRACE)),
    }


def read_torch_profile(folder):
    path = Path(folder) / records.TORCH_PROFILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:  # cut short by a crash while it was written
        return None


def rank_table(ranks):
    """Per rank: step time, data wait, backward (which holds DDP's gradient all-reduce); stragglers flagged."""
    rows = []
    for rank, steps in ranks.items():
        if not steps:
            continue
        row = {
            "rank": rank,
            "step_ms": mean(r["wall_ms"] for r in steps),
            "data_ms": mean(r.get("data", 0.0) for r in steps),
            "backward_ms": mean(r.get("backward", 0.0) for r in steps),
            "work_ms": mean(sum(r.get(k, 0.0) for k in ("data", "h2d", "forward", "loss")) for r in steps),
        }
        if any("allreduce_ms" in r for r in steps):
            row["allreduce_ms"] = mean(r.get("allreduce_ms", 0.0) for r in steps)
        rows.append(row)
    # Every rank waits for the slowest in the backward's all-reduce, so the step time is shared; a
    # straggler shows in the work before it: data, copy, forward and loss.
    typical = median(r["work_ms"] for r in rows) if rows else 0.0
    for row in rows:
        row["straggler"] = typical > 0 and row["work_ms"] > 1.1 * typical
    return rows
