"""Fused or cuDNN for each dense-block shape, so that --fast-kernels is never slower than cuDNN.

With `--dense-kernels auto` (the default), each dense-block shape the training step meets is timed once at
start-up both ways, forward and backward after a warm-up, the median of a few repetitions: the fused
kernels (kernels/dense.py) and the five convolutions on cuDNN in channels-last layout. Every block of that
shape then runs the faster. `fused` and `cudnn` force one. The times and choices go to env.jsonl.
"""

import statistics
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from engine.model.irn import DenseBlock

DENSE_KERNELS = ("auto", "fused", "cudnn")
WARMUP, REPEATS = 3, 5  # timed calls per candidate: after the warm-up (the fused kernels' autotuning), the median


def cudnn_dense_block(x, weights, biases, negative_slope=0.2):
    """The dense block as five cuDNN convolutions on channels-last tensors (tensor cores' layout), returned in
    x's memory format."""
    features = [x.contiguous(memory_format=torch.channels_last)]
    for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
        features.append(F.leaky_relu(F.conv2d(torch.cat(features, 1), weight, bias, padding=1), negative_slope))
    out = F.conv2d(torch.cat(features, 1), weights[-1], biases[-1], padding=1)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@dataclass(frozen=True)
class Choice:
    """One dense-block shape: its input, growth and output, the two times (None: not timed) and the choice."""

    shape: tuple  # the input's (batch, channels, height, width)
    growth: int
    c_out: int
    dtype: str  # the block's compute dtype
    fused_ms: float | None
    cudnn_ms: float | None
    chosen: str  # "fused" or "cudnn"

    def to_json(self):
        return asdict(self) | {"shape": list(self.shape)}

    def __str__(self):
        timed = f" (fused {self.fused_ms:.2f} ms, cuDNN {self.cudnn_ms:.2f} ms)" if self.fused_ms is not None else ""
        return f"dense blocks on {'x'.join(map(str, self.shape))} {self.dtype}: {self.chosen}{timed}"


def block_inputs(model, batch):
    """{dense block: the shape and dtype of its input} in one forward pass of `model` on `batch` (no grad)."""
    seen = {}

    def record(module, inputs):
        dtype = module.compute_dtype or inputs[0].dtype
        seen.setdefault(module, (tuple(inputs[0].shape), dtype))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, DenseBlock)]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def choose(model, batch, mode, timer):
    """Set each dense block of `model` to the fused kernels or to cuDNN per `mode` (auto, fused, cudnn) and
    return the Choice of each shape met in a forward pass on `batch`. `timer(name, block, x)` gives the
    milliseconds of a forward and backward of the op `name` ("fused" or "cudnn") on x with the weights of
    `block` (time_block on a GPU; tests pass a stand-in)."""
    choices = {}
    for block, (shape, dtype) in block_inputs(model, batch).items():
        key = (shape, block.conv1.out_channels, block.conv5.out_channels, dtype)
        if key not in choices:
            x = torch.randn(shape, device=batch.device)
            times = {name: timer(name, block, x) for name in ("fused", "cudnn")} if mode == "auto" else {}
            chosen = min(times, key=times.get) if times else mode
            choices[key] = Choice(shape, key[1], key[2], str(dtype).removeprefix("torch."), times.get("fused"),
                                  times.get("cudnn"), chosen)  # fmt: skip
        block.fast_op = dense_block_op(choices[key].chosen)
    return list(choices.values())


def dense_block_op(name):
    """The dense block's op by name: "fused" (kernels/dense.py) or "cudnn"."""
    from kernels.dense import dense_block

    return {"fused": dense_block, "cudnn": cudnn_dense_block}[name]


def time_block(name, block, x):
    """Milliseconds of one forward and backward of the op `name` on x, as `block` runs it (its compute dtype
    under autocast), with copies of its weights: the median of REPEATS after WARMUP, on CUDA events."""
    op = dense_block_op(name)
    weights = [c.weight.detach().clone().requires_grad_() for c in block.convs()]
    biases = [c.bias.detach().clone().requires_grad_() for c in block.convs()]
    x = x.clone().requires_grad_()
    low = block.compute_dtype is not None

    def step():
        with torch.autocast(x.device.type, dtype=block.compute_dtype, enabled=low):
            out = op(x, weights, biases)
        out.float().sum().backward()

    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
