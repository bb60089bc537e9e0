"""What this machine can do, measured once at the start of a run: the cost of one kernel launch and the
FLOP/s of a large matrix product, the practical peak where no vendor figure is known (CPUs, unlisted
GPUs). The report sets a run's measured step against these (profiling/report/roofline.py).
"""

import time

import torch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def launch_us(device, launches=200):
    """Host time per launch of a tiny kernel, issued back to back: the floor of an op-by-op step."""
    x = torch.zeros(1, device=device)
    for _ in range(20):
        x.add_(1)
    _sync(device)
    start = time.perf_counter()
    for _ in range(launches):
        x.add_(1)
    issued = time.perf_counter() - start
    _sync(device)
    return issued / launches * 1e6


def matmul_tflops(device, dtype=torch.float32, tf32=False, size=None, repeats=3):
    """Best TFLOP/s of a square matrix product (2 n^3 FLOPs) in `dtype` on `device`; fp32 in TF32 when
    `tf32` (pass what the convolutions take), so the rate is the one the step's math can reach."""
    n = size or (8192 if device.type == "cuda" else 1024)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    matmul = torch.backends.cuda.matmul  # its per-op setting: the legacy flag raises once the APIs are mixed
    before = matmul.fp32_precision
    set_fp32_precision(matmul, "tf32" if tf32 else "ieee")
    try:
        a @ b
        _sync(device)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            _sync(device)
            best = min(best, time.perf_counter() - start)
    finally:
        set_fp32_precision(matmul, before)
    return 2 * n**3 / best / 1e12


def set_fp32_precision(level, value):
    """Give one level of PyTorch's per-op TF32 setting (torch.backends.cuda.matmul, cudnn.conv, ...) the
    value `value` as its getter reads it: by deferring to the levels above ("none") where that gives it,
    else explicitly. Writing back a value read would pin the level, and a later setting above it would
    no longer reach it."""
    if level.fp32_precision == value:
        return
    level.fp32_precision = "none"
    if level.fp32_precision != value:
        level.fp32_precision = value


def probe(device, precision, tf32):
    """{'launch_us', 'matmul_tflops'} of `device`, the product in the run's precision (fp32 in TF32 when
    `tf32`: the convolutions' setting)."""
    device = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    tflops = matmul_tflops(device, dtype, tf32)
    return {"launch_us": round(launch_us(device), 3), "matmul_tflops": round(tflops, 4)}
