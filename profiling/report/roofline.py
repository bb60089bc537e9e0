"""How fast a step could run on a GPU: floors from a step census (profiling/runtime/counting.py) and the GPU's limits.

A step cannot take less than any of three floors:
    compute  FLOPs / peak FLOP/s at the step's math precision
    memory   bytes / memory bandwidth          (bytes: every op reading its inputs and writing its outputs once)
    launch   kernels x the cost of one launch  (the host issues kernels one after another)
and, for a fused step whose forecast a run folder holds (forecast.json, `python -m profiling.bench forecast
--run RUN`), a fourth:
    issue    the fused dense kernels' instructions at 4 per clock per SM, from their SASS
The largest is the bound; the forecast is that floor. MFU (model FLOPs utilisation, as nanoGPT reports
it) is the FLOP/s a run achieved over the peak. Peaks are the vendors' dense figures (no sparsity).
"""

from dataclasses import dataclass

LAUNCH_US = 5.0  # host cost of one eager PyTorch kernel launch where the run's probe did not measure it
# torch.compile modes whose inductor options capture CUDA graphs (triton.cudagraphs): the step's kernels
# are replayed, not launched one by one, so there is no launch floor.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def launch_cost_us(compile_mode, measured_us=LAUNCH_US):
    """The host cost of one kernel launch in a step compiled with `compile_mode` ("off" for eager): none
    under CUDA graphs, else `measured_us` (the probe's, or the default)."""
    return 0.0 if compile_mode in CUDA_GRAPH_MODES else measured_us


@dataclass(frozen=True)
class GPU:
    name: str
    peak_tflops: dict  # math precision -> dense peak TFLOP/s
    bandwidth_gbs: float
    capability: int  # compute capability, 10 * major + minor


GPUS = {  # the forecast table: one of each generation, as a user would choose
    "P100": GPU("Tesla P100 PCIe 16 GB", {"fp32": 9.3, "fp16": 18.7}, 732, 60),
    "V100": GPU("Tesla V100 SXM2", {"fp32": 15.7, "fp16": 125.0}, 900, 70),
    "A100": GPU("A100 SXM4 80 GB", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 2039, 80),
    "H100": GPU("H100 SXM5", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}, 3350, 90),
}
# A run's own GPU, by the words of its device name (torch.cuda.get_device_name), the first that matches.
VARIANTS = [
    (("H100", "PCIe"), GPU("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}, 2000, 90)),
    (("H100", "NVL"), GPU("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.0, "fp16": 835.0}, 3900, 90)),
    (("H100",), GPUS["H100"]),
    (("H200",), GPU("H200 SXM", GPUS["H100"].peak_tflops, 4800, 90)),  # the H100's arithmetic, more bandwidth
    (("A100", "40GB"), GPU("A100 40 GB", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 1555, 80)),
    (("A100", "PCIe"), GPU("A100 PCIe 80 GB", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 1935, 80)),
    (("A100",), GPUS["A100"]),
    (("V100", "PCIE"), GPU("Tesla V100 PCIe", {"fp32": 14.0, "fp16": 112.0}, 900, 70)),
    (("V100",), GPUS["V100"]),
    (("P100", "SXM2"), GPU("Tesla P100 SXM2", {"fp32": 10.6, "fp16": 21.2}, 732, 60)),
    (("P100",), GPUS["P100"]),
]
NEXT_STEP = {  # (what to try, the config that already does it)
    "launch": [
        ("--compile reduce-overhead (CUDA graphs)", ("compile", "reduce-overhead")),
        ("--fast-kernels (fewer, larger kernels)", ("fast_kernels", True)),
        ("a larger batch (as many launches, more work each)", None),
    ],
    "memory": [
        ("--fast-kernels (fused dense blocks move fewer bytes)", ("fast_kernels", True)),
        ("--precision bf16 (half the bytes)", ("precision", "bf16")),
    ],
    "issue": [
        ("--precision bf16 (fewer instructions per multiply in the fused dense kernels)", ("precision", "bf16")),
        ("--dense-kernels cudnn where cuDNN is faster (auto chooses per shape at start)", ("dense_kernels", "auto")),
    ],
    "compute": [
        ("--precision bf16 (tensor cores)", ("precision", "bf16")),
        ("a GPU with more FLOP/s; the step is at the hardware's arithmetic limit", None),
    ],
}


def next_steps(bound, cfg):
    """What to try against `bound`, leaving out what the run's config already does."""
    tries = [text for text, done in NEXT_STEP[bound] if done is None or cfg.get(done[0]) != done[1]]
    return "try " + "; or ".join(tries) if tries else "the run already uses what this engine offers against it"


def math_precision(precision, tf32, gpu):
    """The precision the convolutions compute in: TF32 for fp32 where the GPU has it and it is allowed."""
    if precision == "fp32" and tf32 and "tf32" in gpu.peak_tflops:
        return "tf32"
    return precision if precision in gpu.peak_tflops else "fp32"


def floors(census, gpu, precision="fp32", tf32=True, launch_us=LAUNCH_US, issue_ms=None):
    """{'compute_ms', 'memory_ms', 'launch_ms', ('issue_ms',) 'bound', 'floor_ms', 'math'} of a census on
    `gpu`, with the issue floor where one is given."""
    math = math_precision(precision, tf32, gpu)
    ms = {
        "compute": census["flops_per_step"] / (gpu.peak_tflops[math] * 1e12) * 1e3,
        "memory": census["bytes_per_step"] / (gpu.bandwidth_gbs * 1e9) * 1e3,
        "launch": census["kernels_per_step"] * launch_us / 1e3,
    }
    if issue_ms is not None:
        ms["issue"] = issue_ms
    bound = max(ms, key=ms.get)
    return {f"{k}_ms": v for k, v in ms.items()} | {"bound": bound, "floor_ms": ms[bound], "math": math}


def named_gpu(device_name):
    """The figures of a device name such as 'NVIDIA H100 80GB HBM3' or 'NVIDIA A100-PCIE-40GB', or None."""
    words = (device_name or "").upper()
    return next((gpu for keys, gpu in VARIANTS if all(k.upper() in words for k in keys)), None)


def peak(device, precision, tf32, measured_tflops):
    """(peak TFLOP/s, where it comes from, the GPU's figures or None) a run is measured against: its
    GPU's vendor figure at the math precision, or, on CPUs and unlisted GPUs, the measured matrix product."""
    gpu = named_gpu(device.get("name")) if device.get("type") == "cuda" else None
    if gpu:
        math = math_precision(precision, tf32, gpu)
        return gpu.peak_tflops[math], f"{gpu.name}, {math} peak", gpu
    return measured_tflops, f"measured {precision} matrix product on this {device.get('type', 'device')}", None


def forecasts(census, precision="fp32", tf32=True, launch_us=LAUNCH_US, issue=None):
    """{short name: floors} for every GPU of the table, of the step that GPU would run: a fused census
    says what runs before and from the dense kernels' compute capability ("by_capability"). `issue`:
    {short name: issue-bound ms} of the GPUs whose fused step a forecast covers (issue_floors)."""
    issue = issue or {}
    return {
        key: floors(on_gpu(census, gpu), gpu, precision, tf32, launch_us, issue.get(key)) for key, gpu in GPUS.items()
    }


def issue_floors(forecast, census, precision, tf32):
    """{GPU short name: issue-bound ms} of a forecast.json for this step: its steps of the run's precision
    (TF32 for fp32 with TF32, bf16), when the step's dense blocks are fused; {} otherwise."""
    if not forecast or not census or not census.get("setting", {}).get("fast_kernels"):
        return {}
    math = "bf16" if precision == "bf16" else "tf32" if precision == "fp32" and tf32 else None
    return {s["gpu"]: s["issue_ms"] for s in forecast.get("steps", []) if s.get("precision") == math}


def on_gpu(census, gpu):
    """The census totals of the step as `gpu` runs it."""
    split = census.get("by_capability")
    if not split:
        return census
    return split["before"] if gpu.capability < split["capability"] else split["from"]


def utilisation(census, step_ms, peak_tflops):
    """Achieved TFLOP/s of a measured step and its share of the peak (MFU)."""
    achieved = census["flops_per_step"] / (step_ms / 1e3) / 1e12 if step_ms else 0.0
    return {"achieved_tflops": achieved, "mfu": achieved / peak_tflops if peak_tflops else None}
