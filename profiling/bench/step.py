"""The trainer's step per variant (FrEIA eager, fused, compiled, bf16, CUDA graphs): ms, images/s, MFU, kernels
per step, profiled and counted."""

import tempfile
from dataclasses import replace
from functools import partial

import torch
from torch._dynamo.utils import counters

from engine.data import crops
from engine.errors import UserError
from engine.training import config
from engine.training.explosion_guard import ExplosionGuard
from engine.training.step import Trainer
from engine.training.step_census import census
from profiling.bench.figures import Figures, console, device_name, shape, sync, timed
from profiling.report import roofline
from profiling.runtime.probe import matmul_tflops
from profiling.runtime.timer import PhaseTimer

VARIANTS = {
    "freia": {},
    "fast": {"fast_kernels": True},
    "compile": {"compile": "default"},
    "fast+compile": {"fast_kernels": True, "compile": "default"},
    "compile-max-autotune": {"compile": "max-autotune"},
    "compile-cudagraphs": {"compile": "reduce-overhead"},
    "freia-bf16": {"precision": "bf16"},
    "fast-bf16": {"fast_kernels": True, "precision": "bf16"},
    "fast+compile-bf16": {"fast_kernels": True, "compile": "default", "precision": "bf16"},
    "fast+cudagraphs-bf16": {"fast_kernels": True, "compile": "reduce-overhead", "precision": "bf16"},
}


def step_config(args, overrides):
    flags = ["--config", f"irn_x{args.scale}", "--batch-size", str(args.batch), "--crop", str(args.crop)]
    cfg, _ = config.resolve(flags, prog="python -m profiling.bench")
    return replace(cfg, **overrides)


def step_runner(cfg, device, folder=None):
    """run(timer): one Trainer.step on a fixed random batch (data loading is not measured here)."""
    torch.manual_seed(0)
    trainer = Trainer(cfg, device)
    if trainer.kernel_note:
        raise UserError(f"--fast-kernels: {trainer.kernel_note}; run the fast variants on a CUDA GPU")
    batch = crops.random_batch(cfg.batch_size, cfg.crop, cfg.scale, torch.Generator().manual_seed(0))
    if device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}
    guard = ExplosionGuard(folder or tempfile.mkdtemp(), float("inf"), 10, 10**9, ["random"], cfg.grad_clip)
    state = {"step": 0}

    def run(timer):
        timer.begin_step(state["step"])
        trainer.step(batch, timer, guard, state["step"])
        timer.end_step(state["step"])
        state["step"] += 1

    run.trainer, run.batch = trainer, batch
    return run


def kernels_in_a_step(run, device):
    """GPU kernels one step launches, counted by torch.profiler (None on a CPU)."""
    if device.type != "cuda":
        return None
    timer = PhaseTimer(device, enabled=False)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        run(timer)
        sync(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def variant_names(args, device):
    """The variants to time: --variants, else every one on a GPU and those a CPU can run."""
    if not args.variants:
        return list(VARIANTS) if device.type == "cuda" else ["freia", "compile"]
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    return names


def timed_variant(name, args, device):
    """(ms per step, the runner) of one variant, compiled afresh: a shared dynamo cache would hit its
    recompile limit after a few variants and run the rest eagerly under a compiled label."""
    cfg = step_config(args, VARIANTS[name])
    torch._dynamo.reset()
    counters.clear()
    run = step_runner(cfg, device)
    ms = timed(partial(run, PhaseTimer(device, enabled=False)), device, warmup=args.warmup, repeats=args.steps)
    if cfg.compile != "off" and not counters["stats"]["unique_graphs"]:
        raise RuntimeError(f"variant {name} did not compile: dynamo made no graph")
    return ms, run


def peak_of(cfg, device):
    """(peak TFLOP/s, where it comes from) of this device at the variant's math: a listed GPU's vendor
    figure, else a matrix product measured here (with the TF32 setting the trainer applied)."""
    named = {"type": device.type, "name": device_name(device)}
    listed = device.type == "cuda" and roofline.named_gpu(named["name"])
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision, torch.float32)
    measured = None if listed else matmul_tflops(device, dtype, cfg.tf32)
    peak, source, _ = roofline.peak(named, cfg.precision, cfg.tf32, measured)
    return peak, source


STEP_COLUMNS = ["variant", "ms/step", "images/s", "vs freia eager", "TFLOP/s", "MFU", "kernels (profiled)",
                "kernels (census)"]  # fmt: skip


def bench_step(args, device):
    title = f"training step at {shape(args)} ({device_name(device)}), median of {args.steps}"
    result, base = Figures(title, STEP_COLUMNS), None
    for name in variant_names(args, device):
        ms, run = timed_variant(name, args, device)
        base = base or ms
        cfg = run.trainer.cfg
        counted = census(cfg, fused_dense=run.trainer.dense_note is None)  # what this GPU runs
        peak, source = peak_of(cfg, device)
        achieved = counted.flops_per_step / ms / 1e9
        profiled = kernels_in_a_step(run, device)
        result.rows.append([
            name, f"{ms:.2f}", f"{args.batch / ms * 1e3:.0f}", f"{base / ms:.2f}x", f"{achieved:.1f}",
            f"{achieved / peak:.1%}", f"{profiled:,}" if profiled is not None else "-", f"{counted.kernels_per_step:,}",
        ])  # fmt: skip
        console.print(f"  {name}: {ms:.2f} ms/step")
    result.notes.append(f"MFU against {source}; census kernels count the eager ops (compilation fuses some)")
    return result
