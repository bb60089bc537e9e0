"""Benchmarks that print figures (tests never assert times):

    python -m profiling.bench kernels     # each fused op vs torch eager (cuDNN) and torch.compile, GB/s vs a copy
    python -m profiling.bench step        # the trainer's step per variant: ms, images/s, MFU, kernels per step
    python -m profiling.bench memory      # one step with and without --invertible-backprop: memory and time
    python -m profiling.bench overhead    # the profiler's own cost: timing + sampling on vs off, interleaved
    python -m profiling.bench registers   # the Triton kernels compiled for P100/A100/H100: registers, spills
    python -m profiling.bench forecast    # the fused dense blocks' step on A100/H100, from their SASS: no GPU needed
    python -m profiling.bench gpu         # on a GPU: the GPU tests, then all of the above into docs/PERFORMANCE.md

Defaults follow the paper's x4 recipe (batch 16, 144x144 crops) on a GPU, and a small shape on a CPU.
Every figure of one command comes from one process on one machine, so ratios compare like with like.
"""

import sys

import torch

from engine.errors import cli, parser
from profiling.bench.figures import REPO
from profiling.bench.forecast import bench_forecast
from profiling.bench.fused_ops import bench_kernels
from profiling.bench.gpu_page import bench_gpu
from profiling.bench.memory import bench_memory
from profiling.bench.overhead import bench_overhead
from profiling.bench.registers import bench_registers
from profiling.bench.step import VARIANTS, bench_step, step_config


@cli
def main(argv=None):
    cuda = torch.cuda.is_available()
    benches = {
        "kernels": bench_kernels,
        "step": bench_step,
        "memory": bench_memory,
        "overhead": bench_overhead,
        "registers": bench_registers,
        "forecast": bench_forecast,
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
    p.add_argument("--json", action="store_true", help="`registers`, `forecast`: print the figures as JSON")
    p.add_argument("--config", default="irn_x4", help="`forecast`: the config whose training step it forecasts")
    p.add_argument("--dump", default=None, metavar="DIR", help="`forecast`: write every variant's TTGIR, PTX, SASS")
    p.add_argument("--run", default=None, help="`forecast`: of this run's config, into its folder (the report's)")
    p.add_argument("--out", default=str(REPO / "docs" / "PERFORMANCE.md"), help="`gpu`: the page to write")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    step_config(args, {})  # one line for a bad --scale/--batch/--crop before any work
    device = torch.device("cuda" if cuda else "cpu")
    result = benches[args.what](args, device)
    if result is not None:
        result.show()


if __name__ == "__main__":
    main()
