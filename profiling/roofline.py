"""How fast a step could run on a GPU: floors from a step census (profiling/counting.py) and the GPU's limits.

A step cannot take less than any of three floors:
    compute  FLOPs / peak FLOP/s at the step's math precision
    memory   bytes / memory bandwidth          (bytes: every op reading its inputs and writing its outputs once)
    launch   kernels x the cost of one launch  (the host issues kernels one after another)
The largest is the bound; the forecast is that floor. MFU (model FLOPs utilisation, as nanoGPT reports
it) is the FLOP/s a run achieved over the peak. Peaks are the vendors' dense figures (no sparsity).
"""

from dataclasses import dataclass

LAUNCH_US = 5.0  # host cost of one eager PyTorch kernel launch when it is not measured: typically 3-8 us


@dataclass(frozen=True)
class GPU:
    name: str
    peak_tflops: dict  # math precision -> dense peak TFLOP/s
    bandwidth_gbs: float


GPUS = {
    "P100": GPU("Tesla P100 PCIe 16 GB", {"fp32": 9.3, "fp16": 18.7}, 732),
    "V100": GPU("Tesla V100 SXM2", {"fp32": 15.7, "fp16": 125.0}, 900),
    "A100": GPU("A100 SXM4 80 GB", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 2039),
    "H100": GPU("H100 SXM5", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}, 3350),
}
NEXT_STEP = {
    "launch": "try --compile reduce-overhead (CUDA graphs) or --fast-kernels: fewer, larger kernels",
    "memory": "try --fast-kernels (fused dense blocks move fewer bytes) and --precision bf16 (half the bytes)",
    "compute": "try --precision bf16 (tensor cores); beyond that, only a smaller network or batch",
}


def math_precision(precision, tf32, gpu):
    """The precision the convolutions compute in: TF32 for fp32 where the GPU has it and it is allowed."""
    if precision == "fp32" and tf32 and "tf32" in gpu.peak_tflops:
        return "tf32"
    return precision if precision in gpu.peak_tflops else "fp32"


def floors(census, gpu, precision="fp32", tf32=True, launch_us=LAUNCH_US):
    """{'compute_ms', 'memory_ms', 'launch_ms', 'bound', 'floor_ms', 'math'} of a census on `gpu`."""
    math = math_precision(precision, tf32, gpu)
    ms = {
        "compute": census["flops_per_step"] / (gpu.peak_tflops[math] * 1e12) * 1e3,
        "memory": census["bytes_per_step"] / (gpu.bandwidth_gbs * 1e9) * 1e3,
        "launch": census["kernels_per_step"] * launch_us / 1e3,
    }
    bound = max(ms, key=ms.get)
    return {f"{k}_ms": v for k, v in ms.items()} | {"bound": bound, "floor_ms": ms[bound], "math": math}


def named_gpu(device_name):
    """The table's entry for a device name such as 'NVIDIA H100 80GB HBM3', or None."""
    return next((gpu for key, gpu in GPUS.items() if key in (device_name or "")), None)


def forecasts(census, precision="fp32", tf32=True, launch_us=LAUNCH_US):
    """{short name: floors} for every GPU of the table."""
    return {key: floors(census, gpu, precision, tf32, launch_us) for key, gpu in GPUS.items()}


def utilisation(census, step_ms, peak_tflops):
    """Achieved TFLOP/s of a measured step and its share of the peak (MFU)."""
    achieved = census["flops_per_step"] / (step_ms / 1e3) / 1e12 if step_ms else 0.0
    return {"achieved_tflops": achieved, "mfu": achieved / peak_tflops if peak_tflops else None}
