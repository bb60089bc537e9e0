"""A run's torch.profiler traces with GPU kernels, read by Holistic Trace Analysis (HTA), a library made for them.

From each rank's trace (torch_trace.json, torch_trace.rankN.json, the window --torch-profile recorded):

- the temporal breakdown: of the time from a rank's first kernel to its last, how much the GPU was idle,
  computing, or busy with something else (copies, memsets, collectives);
- the kernels by type (computation, memory, communication) and the longest ones;
- the CUDA launch statistics of rank 0: the launch call's time on the CPU against the kernel's own on the
  GPU (a kernel shorter than its launch call is launch-bound), and the delay from the call's end to the
  kernel's start. HTA counts the kernels launched through the runtime API (cudaLaunchKernel: aten's,
  cuDNN's); Triton's go through the driver and are not among them.

HTA is optional (pip install "irnscope[hta]") and imports pandas: it is imported only when a run has a GPU trace,
never when the report starts; without it the report says so in one line. The trace's last recorded step counts:
the capture synchronises the GPU before it stops, so that step's kernels are complete.
"""

import contextlib
import io
import logging
import warnings
from pathlib import Path

from profiling.stats import percentile

LONGEST_KERNELS = 5
SLOW_LAUNCH_US = 50  # a launch call longer than this is an outlier (HTA's default cut-off)
LATE_START_US = 100  # so is a kernel starting later than this after its launch call ended (HTA's default)
INSTALL = 'pip install "irnscope[hta]"'


def breakdowns(traces):
    """HTA's breakdowns of the traces ({rank: path}): {"temporal", "kernel_types", "kernels", "launches"}, or
    {"note": why there are none} (HTA missing, or a trace it cannot read)."""
    try:
        from hta.trace_analysis import TraceAnalysis
    except ImportError as err:
        return {"note": f"GPU trace breakdowns need Holistic Trace Analysis ({err.name} is missing): {INSTALL}"}
    try:
        with quiet():
            files = {rank: str(Path(path).resolve()) for rank, path in traces.items()}  # HTA's own folder else
            analysis = TraceAnalysis(files, include_last_profiler_step=True)
            temporal = analysis.get_temporal_breakdown(visualize=False)
            types, kernels = analysis.get_gpu_kernel_breakdown(visualize=False, num_kernels=LONGEST_KERNELS)
            launches = analysis.get_cuda_kernel_launch_stats(ranks=[min(traces)], visualize=False)
    except Exception as err:  # a trace HTA cannot read: the rest of the report stands
        return {"note": f"Holistic Trace Analysis could not read the GPU trace ({type(err).__name__}: {err})"}
    return {
        "temporal": [time_shares(row) for row in temporal.to_dict("records")],
        "kernel_types": [
            {"type": r["kernel_type"], "us": r["sum"], "share": r["percentage"] / 100} for r in types.to_dict("records")
        ],  # fmt: skip
        "kernels": longest(kernels.to_dict("records")),
        "launches": {rank: launch_stats(found.to_dict("list")) for rank, found in launches.items()},
    }


@contextlib.contextmanager
def quiet():
    """HTA logs each file it parses, prints notes, and pandas warns of what HTA calls: none of it is the report's."""
    logger = logging.getLogger("hta")
    level, logger.level = logger.level, logging.CRITICAL
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
    finally:
        logger.setLevel(level)


def time_shares(row):
    """A rank's temporal breakdown: microseconds idle, computing and otherwise busy, and their span."""
    return {
        "rank": row["rank"],
        "span_us": row["kernel_time(us)"],
        "idle_us": row["idle_time(us)"],
        "compute_us": row["compute_time(us)"],
        "non_compute_us": row["non_compute_time(us)"],
    }


def longest(kernels):
    """The kernels with the most time in all, over every rank."""
    rows = [
        {
            "name": k["name"],
            "type": k["kernel_type"],
            "rank": k["rank"],
            "total_us": k["sum (us)"],
            "mean_us": k["mean (us)"],
        }
        for k in kernels
        if k["name"] != "others"  # HTA's sum of the kernels it does not list
    ]
    return sorted(rows, key=lambda k: -k["total_us"])[:LONGEST_KERNELS]


def launch_stats(found):
    """One rank's launches ({column: values per launch}): how many, their mean times, and the outliers."""
    cpu, gpu, delay = found["cpu_duration"], found["gpu_duration"], found["launch_delay"]
    return {
        "launches": len(cpu),
        "cpu_us_mean": sum(cpu) / len(cpu) if cpu else 0.0,
        "gpu_us_mean": sum(gpu) / len(gpu) if gpu else 0.0,
        "shorter_than_launch": sum(g < c for c, g in zip(cpu, gpu, strict=True)),
        "slow_launches": sum(c > SLOW_LAUNCH_US for c in cpu),
        "delay_us_median": percentile(delay, 0.5),
        "late_starts": sum(d > LATE_START_US for d in delay),
    }
