"""Benchmarks that print figures (tests never assert times):

    python -m profiling.bench kernels      # each fused op vs torch eager and torch.compile of the same math, GB/s
    python -m profiling.bench step         # the trainer's step: FrEIA eager, fast kernels, compile, fast+compile
    python -m profiling.bench overhead     # the profiler's own cost: timing + sampling on vs off, interleaved
    python -m profiling.bench registers    # every Triton kernel compiled for P100/A100/H100: registers, spills

Defaults follow the paper's x4 recipe (batch 16, 144x144 crops) on a GPU, and a small shape on a CPU.
"""

import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from functools import partial

import torch
from rich.console import Console
from rich.table import Table
from torch._dynamo.utils import counters

from engine import config
from engine.errors import UserError, cli, parser
from engine.guard import ExplosionGuard
from engine.irn import coupling_scale
from engine.trainer import Trainer
from profiling import records
from profiling.gpu import Sampler
from profiling.timer import PhaseTimer

console = Console(width=None if sys.stdout.isatty() else 150)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup=3, repeats=20):
    """Median milliseconds of fn() over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# --- kernels ------------------------------------------------------------------------------------


def copy_bandwidth(device, mib=512):
    """Device-to-device copy GB/s (read + write), the roof for memory-bound kernels."""
    src = torch.empty(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src), device)
    return 2 * src.numel() * 4 / ms / 1e6


def haar_math(x):
    a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return torch.cat([(a + b + c + d) / 4, (a - b + c - d) / 4, (a + b - c - d) / 4, (a - b - c + d) / 4], 1)


def coupling_math(x2, h, g):
    return x2 * torch.exp(coupling_scale(h, 1.0)) + g


def kernel_cases(batch, crop, scale, device):
    """(name, fused fn, same math in torch, inputs, bytes moved) at the shapes of an x`scale` training step."""
    from kernels.coupling import coupling
    from kernels.haar import haar

    cases, channels, side = [], 3, crop
    for _ in range(scale.bit_length() - 1):  # one Haar stage per factor of two
        x = torch.randn(batch, channels, side, side, device=device)
        n = x.numel() * 4
        cases.append((f"haar fwd  {tuple(x.shape)}", haar, haar_math, (x,), 2 * n))
        channels, side = channels * 4, side // 2
        t = [torch.randn(batch, channels - 3, side, side, device=device) for _ in range(3)]
        n = t[0].numel() * 4
        cases.append(
            (
                f"coupling fwd {tuple(t[0].shape)}",
                lambda a, b, c: coupling(a, b, c, 1.0),
                coupling_math,
                tuple(t),
                4 * n,
            )
        )
    return cases


def with_backward(fn, inputs):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*inputs)
    grad = torch.ones_like(out)
    return lambda: torch.autograd.grad(fn(*inputs), inputs, grad)


def bench_kernels(args, device):
    cases = kernel_cases(args.batch, args.crop, args.scale, device)
    roof = copy_bandwidth(device) if device.type == "cuda" else None
    table = Table(
        title=f"fused ops at x{args.scale}, batch {args.batch}, {args.crop}x{args.crop} ({device})"
        + (f"; copy bandwidth {roof:.0f} GB/s" if roof else "")
    )
    for col in (
        "op",
        "eager ms",
        "compile ms",
        "triton ms",
        "triton GB/s",
        "of copy",
        "triton fwd+bwd ms",
        "eager fwd+bwd ms",
    ):
        table.add_column(col, justify="right" if col != "op" else "left")
    for name, fused, math, inputs, nbytes in cases:
        eager = timed(partial(math, *inputs), device)
        compiled = timed(partial(torch.compile(math), *inputs), device)
        eager_bwd = timed(with_backward(math, inputs), device)
        if device.type == "cuda":
            ms = timed(partial(fused, *inputs), device)
            gbs = nbytes / ms / 1e6
            cells = [
                f"{ms:.3f}",
                f"{gbs:.0f}",
                f"{gbs / roof:.0%}",
                f"{timed(with_backward(fused, inputs), device):.3f}",
            ]
        else:
            cells = ["needs CUDA", "-", "-", "-"]
        table.add_row(name, f"{eager:.3f}", f"{compiled:.3f}", *cells, f"{eager_bwd:.3f}")
    console.print(table)


# --- training step ------------------------------------------------------------------------------

VARIANTS = {
    "freia": {},
    "fast": {"fast_kernels": True},
    "compile": {"compile": "default"},
    "fast+compile": {"fast_kernels": True, "compile": "default"},
    "compile-max-autotune": {"compile": "max-autotune"},
    "compile-cudagraphs": {"compile": "reduce-overhead"},
    "freia-bf16": {"precision": "bf16"},
    "fast+compile-bf16": {"fast_kernels": True, "compile": "default", "precision": "bf16"},
}


def step_config(args, overrides):
    flags = ["--config", f"irn_x{args.scale}", "--batch-size", str(args.batch), "--crop", str(args.crop)]
    cfg, _ = config.resolve(flags, prog="python -m profiling.bench")
    cfg.update(overrides)
    return cfg


def step_runner(cfg, device, folder=None):
    """run(timer): one Trainer.step on a fixed random batch (data loading is not measured here)."""
    torch.manual_seed(0)
    trainer = Trainer(cfg, device)
    if trainer.kernel_note:
        raise UserError(f"--fast-kernels: {trainer.kernel_note}; run the fast variants on a CUDA GPU")
    g = torch.Generator().manual_seed(0)
    b, crop, scale = cfg["batch_size"], cfg["crop"], cfg["scale"]
    batch = {
        "hr": torch.randint(0, 256, (b, 3, crop, crop), dtype=torch.uint8, generator=g),
        "lr_ref": torch.rand(b, 3, crop // scale, crop // scale, generator=g),
        "noise": torch.randn(b, trainer.model.z_channels(), crop // scale, crop // scale, generator=g),
        "image": torch.zeros(b, dtype=torch.long),
        "box": torch.zeros(b, 4, dtype=torch.long),
        "aug": torch.zeros(b, dtype=torch.long),
    }
    if device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}
    guard = ExplosionGuard(folder or tempfile.mkdtemp(), float("inf"), 10, 10**9, ["random"])
    state = {"step": 0}

    def run(timer):
        trainer.step(batch, timer, guard, state["step"])
        timer.end_step(state["step"])
        state["step"] += 1

    return run


def bench_step(args, device):
    names = (
        args.variants.split(",")
        if args.variants
        else (list(VARIANTS) if device.type == "cuda" else ["freia", "compile"])
    )
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    table = Table(
        title=f"training step at x{args.scale}, batch {args.batch}, {args.crop}x{args.crop} ({device}), "
        f"median of {args.steps}"
    )
    for col in ("variant", "ms/step", "images/s", "vs freia eager"):
        table.add_column(col, justify="right" if col != "variant" else "left")
    base = None
    for name in names:
        cfg = step_config(args, VARIANTS[name])
        # Each variant compiles afresh: a shared dynamo cache would hit its recompile limit after a few
        # variants and run the rest eagerly under a compiled label.
        torch._dynamo.reset()
        counters.clear()
        run, timer = step_runner(cfg, device), PhaseTimer(device, enabled=False)
        ms = timed(partial(run, timer), device, warmup=args.warmup, repeats=args.steps)
        if cfg["compile"] != "off" and not counters["stats"]["unique_graphs"]:
            raise RuntimeError(f"variant {name} did not compile: dynamo made no graph")
        base = base or ms
        table.add_row(name, f"{ms:.1f}", f"{args.batch / ms * 1e3:.1f}", f"{base / ms:.2f}x")
        console.print(f"  {name}: {ms:.1f} ms/step")
    console.print(table)


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
            sampler = (
                Sampler(samples, cfg["gpu_sample_ms"], log=lambda m: None, devices=device) if on else nullcontext()
            )
            with sampler:
                times[key].append(timed(partial(run, timer), device, warmup=1, repeats=args.steps))
            timer.flush()
            kind = getattr(sampler, "kind", kind)
    on_ms, off_ms = statistics.median(times["on"]), statistics.median(times["off"])
    console.print(
        f"profiler overhead at x{args.scale}, batch {args.batch}, {args.crop}x{args.crop} ({device}): "
        f"on {on_ms:.2f} ms/step, off {off_ms:.2f} ms/step -> {100 * (on_ms / off_ms - 1):+.2f}% "
        f"(median of {args.rounds} alternating rounds of {args.steps} steps; sampler: {kind})"
    )


def bench_registers(args, device):
    """Registers per thread and spilled bytes of every kernel variant, compiled ahead of time for each target
    GPU (no GPU needed): one row per variant, one column per target."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise UserError("ahead-of-time compiles need the real Triton compiler: unset TRITON_INTERPRET")
    from rich import box

    from kernels import aot

    rows = aot.compile_all()
    if args.json:
        print(json.dumps(rows))
        return
    targets = sorted({r["target"] for r in rows}, key=lambda t: int(t[3:]))
    cells = {}
    for r in rows:
        cell = "error" if "error" in r else f"{r['registers']}/{r['spill_bytes']}"
        cells.setdefault(r["short"], {})[r["target"]] = f"[red]{cell}" if "error" in r or r["spill_bytes"] else cell
    title = "Triton kernels compiled ahead of time: registers per thread / spilled bytes"
    caption = "M N K P WN WC: BLOCK_M ... BLOCK_WC; /w32: fp32 weights (autocast); +16:arg: arg 16-divisible"
    caption += "; -: not launched"
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    table.add_column("kernel variant")
    for target in targets:
        table.add_column(f"{target} {aot.TARGETS.get(int(target[3:]), '')}", justify="right")
    order = {v.short: i for i, v in enumerate(aot.variants())}
    for short in sorted(cells, key=lambda name: order.get(name, len(order))):
        table.add_row(short, *(cells[short].get(t, "-") for t in targets))
    console.print(table)
    for target in targets:
        done = [r for r in rows if r["target"] == target]
        spilling = sum(1 for r in done if r.get("spill_bytes"))
        failed = [r for r in done if "error" in r]
        console.print(f"{target}: {len(done)} variants, {spilling} spilling, {len(failed)} failing to compile")
        for r in failed:
            console.print(f"  {r['short']}: {r['error']}", markup=False)


@cli
def main(argv=None):
    cuda = torch.cuda.is_available()
    p = parser("python -m profiling.bench", __doc__)
    p.add_argument("what", choices=("kernels", "step", "overhead", "registers"))
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--batch", type=int, default=16 if cuda else 2)
    p.add_argument("--crop", type=int, default=144 if cuda else 32)
    p.add_argument("--steps", type=int, default=30 if cuda else 5, help="timed steps per measurement")
    p.add_argument(
        "--warmup", type=int, default=10 if cuda else 2, help="untimed steps first (compilation, autotuning)"
    )
    p.add_argument("--rounds", type=int, default=5, help="alternating on/off rounds for `overhead`")
    p.add_argument("--variants", default="", help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--json", action="store_true", help="`registers`: print the rows as JSON")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    device = torch.device("cuda" if cuda else "cpu")
    benches = {"kernels": bench_kernels, "step": bench_step, "overhead": bench_overhead, "registers": bench_registers}
    benches[args.what](args, device)


if __name__ == "__main__":
    main()
