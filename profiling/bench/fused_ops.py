"""Each fused op against the same op in torch (eager: cuDNN for the dense blocks) and under torch.compile, at a
training step's shapes: milliseconds, and GB/s against a device-to-device copy."""

from functools import partial

import torch

from engine.model.irn import IMAGE_CHANNELS, LEARNED_DOWNSAMPLING, DenseBlock, coupling_scale, stages
from profiling.bench.figures import Figures, device_name, shape, timed


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
    from engine.model.dense_choice import tune_block
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
            weights, biases = block.weights_and_biases()
            x = torch.randn(batch, c_in, side, side, device=device)
            tune_block([block], x)  # the tiles the trainer takes for this shape, one block a call (a GPU's)
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
