"""Benchmarks that print figures (tests never assert times):

    python -m profiling.bench kernels     # each fused op vs torch eager (cuDNN) and torch.compile, GB/s vs a copy
    python -m profiling.bench step        # the trainer's step per variant: ms, images/s, MFU, kernels per step
    python -m profiling.bench memory      # one step with and without --invertible-backprop: memory and time
    python -m profiling.bench overhead    # the profiler's own cost: timing + sampling on vs off, interleaved
    python -m profiling.bench registers   # the Triton kernels compiled for P100/A100/H100: registers, spills
    python -m profiling.bench gpu         # on a GPU: the GPU tests, then all of the above into docs/PERFORMANCE.md

Defaults follow the paper's x4 recipe (batch 16, 144x144 crops) on a GPU, and a small shape on a CPU.
Every figure of one command comes from one process on one machine, so ratios compare like with like.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch._dynamo.utils import counters
from torch._subclasses.fake_tensor import FakeTensorMode

from engine import config, data, rundir
from engine.backprop import reconstruction_errors, saved_bytes
from engine.errors import UserError, cli, parser
from engine.guard import ExplosionGuard
from engine.irn import IMAGE_CHANNELS, LEARNED_DOWNSAMPLING, DenseBlock, coupling_scale, quantize, stages
from engine.losses import irn_losses, network_passes
from engine.trainer import Trainer, census
from profiling import records, roofline
from profiling.gpu import Sampler
from profiling.probe import matmul_tflops
from profiling.timer import PhaseTimer

console = Console(width=None if sys.stdout.isatty() else 150)
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Figures:
    """One bench's result: a titled table with notes, printed in the terminal or written as Markdown."""

    title: str
    columns: list
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def table(self):
        table = Table(title=self.title)
        for i, col in enumerate(self.columns):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in self.rows:
            table.add_row(*row)
        return table

    def markdown(self):
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines + [""] + [f"{note}  " for note in self.notes]) + "\n"

    def show(self):
        console.print(self.table())
        for note in self.notes:
            console.print(note)


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


def shape(args):
    return f"x{args.scale}, batch {args.batch}, {args.crop}x{args.crop}"


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


def coupling_inputs(scale, crop):
    """(channels, side) of the coupling blocks' input at each stage of an x`scale` network."""
    if scale in LEARNED_DOWNSAMPLING:
        return [(IMAGE_CHANNELS * scale**2, crop // scale)]
    return [(IMAGE_CHANNELS * 4**k, crop // 2**k) for k in range(1, stages(scale) + 1)]


def kernel_cases(batch, crop, scale, device):
    """(name, fused fn, the same op in torch, inputs, bytes the fused op moves) at a training step's shapes."""
    from kernels.coupling import coupling
    from kernels.dense import TRAFFIC, dense_block
    from kernels.haar import haar

    cases = []
    for channels, side in coupling_inputs(scale, crop):
        if scale not in LEARNED_DOWNSAMPLING:
            x = torch.randn(batch, channels // 4, 2 * side, 2 * side, device=device)
            cases.append((f"haar fwd {tuple(x.shape)}", haar, haar_math, (x,), 2 * x.numel() * 4))
        t = [torch.randn(batch, channels - 3, side, side, device=device) for _ in range(3)]
        fused_coupling = partial(coupling, clamp=1.0)
        cases.append(
            (f"coupling fwd {tuple(t[0].shape)}", fused_coupling, coupling_math, tuple(t), 4 * t[0].numel() * 4)
        )
        for c_in, c_out in ((channels - 3, 3), (3, channels - 3)):
            block = DenseBlock(c_in, c_out).to(device)
            convs = block.convs()
            weights, biases = [c.weight for c in convs], [c.bias for c in convs]
            x = torch.randn(batch, c_in, side, side, device=device)
            moved = TRAFFIC["irn::dense_block"]((x, weights, biases, 0.2))
            fused = partial(dense_block, weights=weights, biases=biases)
            cases.append((f"dense block {c_in}->{c_out} at {side}x{side}", fused, block.reference, (x,), moved))
    return cases


def with_backward(fn, inputs):
    """fn's forward and its whole backward (weights' gradients included), as training runs it."""
    inputs = [t.detach().requires_grad_() for t in inputs]
    grad = torch.ones_like(fn(*inputs))
    return lambda: fn(*inputs).backward(grad)


def bench_kernels(args, device):
    cuda = device.type == "cuda"
    roof = copy_bandwidth(device) if cuda else None
    columns = ["op", "eager ms", "compile ms", "triton ms", "triton GB/s", "of copy", "eager fwd+bwd ms"]
    result = Figures(f"fused ops at {shape(args)} ({device_name(device)})", columns + ["triton fwd+bwd ms"])
    for name, fused, reference, inputs, moved in kernel_cases(args.batch, args.crop, args.scale, device):
        torch._dynamo.reset()
        eager = timed(partial(reference, *inputs), device)
        compiled = timed(partial(torch.compile(reference), *inputs), device)
        eager_backward = timed(with_backward(reference, inputs), device)
        if cuda:
            ms = timed(partial(fused, *inputs), device)
            gbs = moved / ms / 1e6
            backward = timed(with_backward(fused, inputs), device)
            cells = [f"{ms:.3f}", f"{gbs:.0f}", f"{gbs / roof:.0%}", f"{eager_backward:.3f}", f"{backward:.3f}"]
        else:
            cells = ["needs CUDA", "-", "-", f"{eager_backward:.3f}", "-"]
        result.rows.append([name, f"{eager:.3f}", f"{compiled:.3f}", *cells])
    if roof:
        result.notes.append(f"copy bandwidth {roof:.0f} GB/s; dense blocks' bytes: each kernel's reads and writes once")
    result.notes.append("eager: the reference ops (cuDNN convolutions, concatenation, LeakyReLU for the dense blocks)")
    return result


# --- the training step ----------------------------------------------------------------------------

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
    return {**cfg, **overrides}


def step_runner(cfg, device, folder=None):
    """run(timer): one Trainer.step on a fixed random batch (data loading is not measured here)."""
    torch.manual_seed(0)
    trainer = Trainer(cfg, device)
    if trainer.kernel_note:
        raise UserError(f"--fast-kernels: {trainer.kernel_note}; run the fast variants on a CUDA GPU")
    g = torch.Generator().manual_seed(0)
    b, crop, side = cfg["batch_size"], cfg["crop"], cfg["crop"] // cfg["scale"]
    batch = {
        "hr": torch.randint(0, 256, (b, 3, crop, crop), dtype=torch.uint8, generator=g),
        "lr_ref": torch.rand(b, 3, side, side, generator=g),
        "noise": torch.randn(b, trainer.model.z_channels(), side, side, generator=g),
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

    run.trainer, run.batch = trainer, batch
    return run


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"


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


def bench_step(args, device):
    names = (
        args.variants.split(",")
        if args.variants
        else (list(VARIANTS) if device.type == "cuda" else ["freia", "compile"])
    )
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    columns = [
        "variant",
        "ms/step",
        "images/s",
        "vs freia eager",
        "TFLOP/s",
        "MFU",
        "kernels (profiled)",
        "kernels (census)",
    ]
    result = Figures(f"training step at {shape(args)} ({device_name(device)}), median of {args.steps}", columns)
    base = None
    for name in names:
        cfg = step_config(args, VARIANTS[name])
        # Each variant compiles afresh: a shared dynamo cache would hit its recompile limit after a few
        # variants and run the rest eagerly under a compiled label.
        torch._dynamo.reset()
        counters.clear()
        run = step_runner(cfg, device)
        ms = timed(partial(run, PhaseTimer(device, enabled=False)), device, warmup=args.warmup, repeats=args.steps)
        if cfg["compile"] != "off" and not counters["stats"]["unique_graphs"]:
            raise RuntimeError(f"variant {name} did not compile: dynamo made no graph")
        base = base or ms
        counted = census(cfg, fused_dense=run.trainer.dense_note is None)  # what this GPU runs
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg["precision"], torch.float32)
        named = {"type": device.type, "name": device_name(device)}
        listed = device.type == "cuda" and roofline.named_gpu(named["name"])
        measured = None if listed else matmul_tflops(device, dtype, cfg["tf32"])  # the trainer set it so
        peak, source, _ = roofline.peak(named, cfg["precision"], cfg["tf32"], measured)
        achieved = counted.flops_per_step / ms / 1e9
        profiled = kernels_in_a_step(run, device)
        result.rows.append([
            name, f"{ms:.2f}", f"{args.batch / ms * 1e3:.0f}", f"{base / ms:.2f}x", f"{achieved:.1f}",
            f"{achieved / peak:.1%}", f"{profiled:,}" if profiled is not None else "-", f"{counted.kernels_per_step:,}",
        ])  # fmt: skip
        console.print(f"  {name}: {ms:.2f} ms/step")
    result.notes.append(f"MFU against {source}; census kernels count the eager ops (compilation fuses some)")
    return result


# --- memory ---------------------------------------------------------------------------------------


def activation_bytes(cfg):
    """Bytes autograd saves for the backward in one step's two passes and losses, counted on fake
    tensors at the step's real size (no compute)."""
    trainer = Trainer({**cfg, "fast_kernels": False, "compile": "off"}, torch.device("cpu"))
    model, exclude = trainer.model, [*trainer.model.parameters(), *trainer.model.buffers()]
    b, crop, side = cfg["batch_size"], cfg["crop"], cfg["crop"] // cfg["scale"]
    with FakeTensorMode(allow_non_fake_inputs=True):
        hr, lr_ref = torch.empty(b, 3, crop, crop), torch.empty(b, 3, side, side)
        noise = torch.empty(b, model.z_channels(), side, side)

        def step():
            y, z, reconstruction = network_passes(model, hr, noise)
            return sum(irn_losses(y, z, reconstruction, hr, lr_ref, cfg).values())

        return saved_bytes(step, exclude=exclude)[1]


def peak_bytes(run, device):
    """The peak of allocated memory over one step: the CUDA allocator's, or on a CPU the 'Total
    Allocated' of torch.profiler's memory events."""
    timer = PhaseTimer(device, enabled=False)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        run(timer)
        sync(device)
        return torch.cuda.max_memory_allocated(device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        run(timer)
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.loads(Path(f.name).read_text())["traceEvents"]
    return max((e["args"].get("Total Allocated", 0) for e in events if e.get("name") == "[memory]"), default=0)


def largest_reconstruction_errors(run, device):
    """The largest error of the inputs that backprop by inversion recomputes, in the HR -> LR pass and in
    the LR, z -> HR pass of the bench's batch, at the model's weights as they are."""
    model, batch = run.trainer.model, run.batch
    with torch.no_grad():
        hr = data.to_float(batch["hr"].to(device))
        y = model(hr)[:, :IMAGE_CHANNELS]
        upscale_input = torch.cat((quantize(y), batch["noise"].to(device)), 1)
    return max(reconstruction_errors(model.net, hr)), max(reconstruction_errors(model.net, upscale_input, rev=True))


def bench_memory(args, device):
    """One step with and without backprop by inversion, side by side in one process."""
    columns = ["backprop", "activations saved (GiB)", "peak allocated (GiB)", "ms/step"]
    clock = "the CUDA allocator" if device.type == "cuda" else "torch.profiler's CPU memory events"
    result = Figures(f"memory of one step at {shape(args)} ({device_name(device)})", columns)
    figures = {}
    for inverting in (False, True):
        cfg = step_config(args, {"invertible_backprop": inverting})
        run = step_runner(cfg, device)
        ms = timed(partial(run, PhaseTimer(device, enabled=False)), device, warmup=args.warmup, repeats=args.steps)
        figures[inverting] = (activation_bytes(cfg), peak_bytes(run, device), ms)
        if inverting:
            errors = largest_reconstruction_errors(run, device)
        saved, peak, _ = figures[inverting]
        name = "by inversion" if inverting else "standard"
        result.rows.append([name, f"{saved / 2**30:.3f}", f"{peak / 2**30:.3f}", f"{ms:.1f}"])
    (saved0, peak0, ms0), (saved1, peak1, ms1) = figures[False], figures[True]
    result.rows.append(["ratio", f"{saved1 / saved0:.1%}", f"{peak1 / peak0:.1%}", f"{ms1 / ms0:.2f}x"])
    result.notes.append(f"activations: saved-tensor hooks on fake tensors at this size; peak: {clock}")
    steps = args.warmup + args.steps + 1  # the timed ones, then the one whose peak is measured
    tf32 = device.type == "cuda" and cfg["tf32"]
    result.notes.append(
        f"largest error of the inputs recomputed by inversion ({'TF32' if tf32 else 'fp32'} convolutions, at the "
        f"weights {steps} steps from their initialisation): HR -> LR {errors[0]:.1e}, LR, z -> HR {errors[1]:.1e}"
    )
    return result


# --- the profiler's own cost ------------------------------------------------------------------------


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


# --- registers ------------------------------------------------------------------------------------


def bench_registers(args, device):
    """Registers per thread and spilled bytes of every kernel variant, compiled ahead of time for each target
    GPU (no GPU needed): one row per variant, one column per target."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise UserError("ahead-of-time compiles need the real Triton compiler: unset TRITON_INTERPRET")
    from kernels import aot

    rows = aot.compile_all()
    if args.json:
        print(json.dumps(rows))
        return None
    targets = sorted({r["target"] for r in rows}, key=lambda t: int(t[3:]))
    cells = {}
    for r in rows:
        cell = "error" if "error" in r else f"{r['registers']}/{r['spill_bytes']}"
        cells.setdefault(r["short"], {})[r["target"]] = cell
    columns = ["kernel variant"] + [f"{t} {aot.TARGETS.get(int(t[3:]), '')}" for t in targets]
    result = Figures("Triton kernels compiled ahead of time: registers per thread / spilled bytes", columns)
    order = {v.short: i for i, v in enumerate(aot.variants())}
    for short in sorted(cells, key=lambda name: order.get(name, len(order))):
        result.rows.append([short, *(cells[short].get(t, "-") for t in targets)])
    result.notes.append("M N K P WN WC: BLOCK_M ... BLOCK_WC; /w32: fp32 weights (autocast); +16:arg: arg 16-divisible")
    for target in targets:
        done = [r for r in rows if r["target"] == target]
        spilling, failed = sum(1 for r in done if r.get("spill_bytes")), [r for r in done if "error" in r]
        result.notes.append(f"{target}: {len(done)} variants, {spilling} spilling, {len(failed)} failing to compile")
        result.notes += [f"{r['short']}: {r['error']}" for r in failed]
    return result


# --- everything, on a GPU ----------------------------------------------------------------------------


def run_tests(*pytest_args):
    """(command, pytest's summary line, exit code) of a pytest run in a subprocess."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    summary = next((line for line in reversed(done.stdout.splitlines()) if line.strip()), "no output")
    return " ".join(["pytest", *pytest_args]), summary, done.returncode


def bench_gpu(args, device):
    """The GPU tests, then every bench at the recipe's shape, all into one Markdown file."""
    if device.type != "cuda":
        raise UserError("`bench gpu` runs on a CUDA GPU; on a CPU run the benches one by one")
    tests = [run_tests("-m", "gpu"), run_tests("tests/kernels")]
    figures = []
    for bench in (bench_kernels, bench_step, bench_memory, bench_overhead, bench_registers):
        console.print(f"[bold]{bench.__name__}")
        figures.append(bench(args, device))
        figures[-1].show()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(performance_page(device, tests, figures))
    console.print(f"wrote {args.out}")


def performance_page(device, tests, figures):
    import triton

    props = torch.cuda.get_device_properties(device)
    lines = [
        "# Performance",
        "",
        f"Measured by `python -m profiling.bench gpu` on {date.today():%Y-%m-%d}: one process, one card.",
        "",
        f"- card: {props.name} (compute capability {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB)",
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), "
        f"triton {triton.__version__}, Python {platform.python_version()}",
        f"- commit {rundir.git_commit()}",
        "",
        "## Tests on this card",
        "",
        *[f"- `{command}`: {summary}" + ("" if code == 0 else " (FAILED)") for command, summary, code in tests],
        "",
        "## Figures",
        "",
    ]
    return "\n".join(lines) + "\n" + "\n".join(f.markdown() for f in figures)


@cli
def main(argv=None):
    cuda = torch.cuda.is_available()
    benches = {
        "kernels": bench_kernels,
        "step": bench_step,
        "memory": bench_memory,
        "overhead": bench_overhead,
        "registers": bench_registers,
        "gpu": bench_gpu,
    }
    p = parser("python -m profiling.bench", __doc__)
    p.add_argument("what", choices=list(benches))
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--batch", type=int, default=16 if cuda else 2)
    p.add_argument("--crop", type=int, default=144 if cuda else 32)
    p.add_argument("--steps", type=int, default=30 if cuda else 5, help="timed steps per measurement")
    p.add_argument(
        "--warmup", type=int, default=10 if cuda else 2, help="untimed steps first (compilation, autotuning)"
    )
    p.add_argument("--rounds", type=int, default=5, help="alternating on/off rounds for `overhead`")
    p.add_argument("--variants", default="", help=f"`step`: comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--json", action="store_true", help="`registers`: print the rows as JSON")
    p.add_argument("--out", default=str(REPO / "docs" / "PERFORMANCE.md"), help="`gpu`: the page to write")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    step_config(args, {})  # one line for a bad --scale/--batch/--crop before any work
    device = torch.device("cuda" if cuda else "cpu")
    result = benches[args.what](args, device)
    if result is not None:
        result.show()


if __name__ == "__main__":
    main()
