"""On a GPU: the GPU tests, then every bench at the recipe's shape, into docs/PERFORMANCE.md."""

import os
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

import torch

from engine.errors import UserError
from engine.training import run_folder
from profiling.bench.figures import REPO, console
from profiling.bench.fused_ops import bench_kernels
from profiling.bench.memory import bench_memory
from profiling.bench.overhead import bench_overhead
from profiling.bench.registers import bench_registers
from profiling.bench.step import bench_step


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
        f"- commit {run_folder.git_commit()}",
        "",
        "## Tests on this card",
        "",
        *[f"- `{command}`: {summary}" + ("" if code == 0 else " (FAILED)") for command, summary, code in tests],
        "",
        "## Figures",
        "",
    ]
    return "\n".join(lines) + "\n" + "\n".join(f.markdown() for f in figures)
