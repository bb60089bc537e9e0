"""Benchmarks that print figures (tests never assert times):

    python -m profiling.bench kernels     # each fused op vs torch eager (cuDNN) and torch.compile, GB/s vs a copy
    python -m profiling.bench step        # the trainer's step per variant: ms, images/s, MFU, kernels per step
    python -m profiling.bench memory      # one step with and without --invertible-backprop: memory and time
    python -m profiling.bench overhead    # the profiler's own cost: timing + sampling on vs off, interleaved
    python -m profiling.bench registers   # the Triton kernels compiled for P100/A100/H100: registers, spills
    python -m profiling.bench forecast    # the fused dense blocks' step on A100/H100, from their SASS: no GPU needed
    python -m profiling.bench gpu         # on a GPU: the GPU tests, then all of the above into docs/PERFORMANCE.md
    python -m profiling.bench data        # the data cache vs decoding at every start: start, samples/s, peak memory

Defaults follow the paper's x4 recipe (batch 16, 144x144 crops) on a GPU, and a small shape on a CPU.
Every figure of one command comes from one process on one machine, so ratios compare like with like.
"""

import json
import sys

import torch

from engine.errors import UserError, cli, parser
from engine.training import config
from engine.training.config import flag_type
from profiling.bench.data import bench_data
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
        "data": bench_data,
        "forecast": bench_forecast,
        "gpu": bench_gpu,
    }
    p = parser("python -m profiling.bench", __doc__)
    p.add_argument("what", choices=list(benches))
    at_least = {n: flag_type(int, config.integer(n)) for n in (0, 1)}
    p.add_argument("--scale", type=flag_type(int, config.a_scale), default=4)
    p.add_argument("--batch", type=at_least[1], default=16 if cuda else 2)
    p.add_argument("--crop", type=at_least[1], default=144 if cuda else 32)
    p.add_argument("--steps", type=at_least[1], default=30 if cuda else 5, help="timed steps per measurement")
    p.add_argument(
        "--warmup", type=at_least[0], default=10 if cuda else 2, help="untimed steps first (compilation, autotuning)"
    )
    p.add_argument("--rounds", type=at_least[1], default=5, help="alternating on/off rounds for `overhead`")
    p.add_argument("--variants", default="", help=f"`step`: comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--images", type=at_least[1], default=100, help="`data`: images in the generated set")
    p.add_argument("--image-size", default="2040x1356", help="`data`: WxH of the generated images (DIV2K's)")
    p.add_argument("--run-steps", type=at_least[1], default=200, help="`data`: steps of the demo runs measured")
    p.add_argument("--json", action="store_true", help="print the figures (and their raw records) as JSON")
    p.add_argument("--config", default="irn_x4", help="`forecast`: the config whose training step it forecasts")
    p.add_argument("--dump", default=None, metavar="DIR", help="`forecast`: write every variant's TTGIR, PTX, SASS")
    p.add_argument("--run", default=None, help="`forecast`: of this run's config, into its folder (the report's)")
    p.add_argument("--out", default=str(REPO / "docs" / "PERFORMANCE.md"), help="`gpu`: the page to write")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.json and args.what == "gpu":
        raise UserError("`bench gpu` writes its figures into --out (docs/PERFORMANCE.md); drop --json")
    step_config(args, {})  # one line for a bad --scale/--batch/--crop before any work
    device = torch.device("cuda" if cuda else "cpu")
    result = benches[args.what](args, device)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    elif result is not None:
        result.show()


if __name__ == "__main__":
    main()
