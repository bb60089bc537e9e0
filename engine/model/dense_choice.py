"""Fused or cuDNN for each dense-block shape, so that --fast-kernels is never slower than cuDNN.

With `--dense-kernels auto` (the default), each dense-block shape the training step meets is timed once at
start-up both ways, forward and backward after a warm-up, the median of a few repetitions: the fused
kernels (kernels/dense.py) and the five convolutions on cuDNN in channels-last layout. A coupling's H and G
are timed as they run, together: one call of the fused op for both, against two cuDNN blocks. Every block
of that shape then runs the faster. `fused` and `cudnn` force one. Unless cuDNN is forced, the fused kernels' tile
configs are chosen first for the shape, each candidate of each launch timed on scratch buffers
(kernels.dense.tune): the ops never time anything while training. Under torch.distributed every rank then
takes rank 0's choices, kernels and tiles, so that the fused blocks compute the same bits on every rank
(blocks on cuDNN only without cudnn_benchmark, under which each rank times its own algorithms). The times,
tiles and choices go to env.jsonl.
"""

import statistics
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from engine.model import execution
from engine.model.irn import DenseBlock, IRNCoupling

DENSE_KERNELS = ("auto", "fused", "cudnn")
WARMUP, REPEATS = 3, 5  # timed calls per candidate: after the warm-up (compiles), the median
LAUNCHES_TIMED = 20  # back-to-back launches in one timed call of a tile candidate


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
    """One dense-block shape: its input, growth and output, the two times (None: not timed) of `subnets` blocks
    (2: a coupling's H and G, which run together), the choice, and the fused kernels' tiles (tune_block's;
    None: not tuned)."""

    shape: tuple  # the input's (batch, channels, height, width)
    growth: int
    c_out: int
    dtype: str  # the block's compute dtype
    fused_ms: float | None
    cudnn_ms: float | None
    chosen: str  # "fused" or "cudnn"
    tiles: dict | None = None
    subnets: int = 1

    def to_json(self):
        return asdict(self) | {"shape": list(self.shape)}

    def __str__(self):
        together = "H and G: " if self.subnets == 2 else ""
        timed = (
            f" ({together}fused {self.fused_ms:.2f} ms, cuDNN {self.cudnn_ms:.2f} ms)"
            if self.fused_ms is not None
            else ""
        )
        return f"dense blocks on {'x'.join(map(str, self.shape))} {self.dtype}: {self.chosen}{timed}"


def block_inputs(model, batch):
    """{dense block: the shape and dtype of its input} in one forward pass of `model` on `batch` (no grad), with
    each block called on its own (no coupling's H and G in one call)."""
    seen = {}

    def record(module, inputs):
        dtype = module.compute_dtype or inputs[0].dtype
        seen.setdefault(module, (tuple(inputs[0].shape), dtype))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, DenseBlock)]
    execution.pair_subnets(model, enabled=False)
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
        execution.pair_subnets(model)  # paired again as the blocks' ops say
    return seen


def choose(model, batch, mode, timer, tune=None):
    """Set each dense block of `model` to the fused kernels or to cuDNN per `mode` (auto, fused, cudnn) and
    return the Choice of each shape met in a forward pass on `batch`. `timer(name, blocks, x)` gives the
    milliseconds of a forward and backward of the op `name` ("fused" or "cudnn") on x with the weights of
    `blocks` (one, or a coupling's H and G: time_block on a GPU; tests pass a stand-in); `tune(blocks, x)` chooses
    the fused kernels' tiles for x's shape (tune_block, the default). Under torch.distributed, rank 0's choices
    on every rank. Each coupling then runs H and G together where both are fused (execution.pair_subnets)."""
    tune = tune or tune_block
    paired = {block for m in model.modules() if isinstance(m, IRNCoupling) for block in (m.H, m.G)}
    shapes = {}
    for block, (shape, dtype) in block_inputs(model, batch).items():
        shapes.setdefault((shape, block.conv1.out_channels, block.conv5.out_channels, dtype), []).append(block)
    choices = {}
    for key, blocks in shapes.items():
        x = torch.randn(key[0], device=batch.device)
        together = blocks[:2] if blocks[0] in paired else blocks[:1]  # a coupling's H and G share a shape
        tiles = tune(together, x) if mode != "cudnn" else None
        times = {name: timer(name, together, x) for name in ("fused", "cudnn")} if mode == "auto" else {}
        chosen = min(times, key=times.get) if times else mode
        choices[key] = Choice(key[0], key[1], key[2], str(key[3]).removeprefix("torch."), times.get("fused"),
                              times.get("cudnn"), chosen, tiles, len(together))  # fmt: skip
    from kernels import dense

    choices, configs = rank_zeros((choices, dense.chosen_configs()))
    dense.adopt_configs(configs)
    for key, blocks in shapes.items():
        for block in blocks:
            block.fast_op = dense_block_op(choices[key].chosen)
    execution.pair_subnets(model)
    return list(choices.values())


def rank_zeros(obj):
    """Rank 0's `obj` on every rank of torch.distributed's default group; `obj` itself without one."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def tune_block(blocks, x):
    """The fused kernels' tile configs for x's shape, as `blocks` run it (one block, or two in one call; their
    compute dtype, their weights' dtype): each launch's candidates timed on scratch buffers
    (kernels.dense.tune), then {"forward": pixels a tile of convs 1..5, "backward": of steps 5..1,
    "backward_no_dx": of those when x needs no gradient}. None off a GPU (the interpreter has one config)."""
    from kernels import dense
    from kernels.precision import tf32_convolutions

    if x.device.type != "cuda":
        return None
    x = x.to(blocks[0].compute_dtype or x.dtype)
    weights, biases = zip(*(block.weights_and_biases() for block in blocks), strict=True)
    launches = dense.block_launches(x, weights, biases, tf32_convolutions())
    dense.tune([launch for group in launches for launch in group], _launch_ms)
    return dict(zip(("forward", "backward", "backward_no_dx"), map(dense.tile_sizes, launches), strict=True))


def _launch_ms(run, back_to_back=LAUNCHES_TIMED):
    """Milliseconds of one launch, run(), timed as `back_to_back` of them: between two events a single launch
    of a small stage would be timed with the host's cost of launching it, the same for every tile."""
    return _gpu_ms(lambda: [run() for _ in range(back_to_back)]) / back_to_back


def _gpu_ms(run):
    """Milliseconds of run() on the GPU, on CUDA events: the median of REPEATS after WARMUP runs."""
    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def dense_block_op(name):
    """The dense block's op by name: "fused" (kernels/dense.py) or "cudnn"."""
    from kernels.dense import dense_block

    return {"fused": dense_block, "cudnn": cudnn_dense_block}[name]


def time_block(name, blocks, x):
    """Milliseconds of one forward and backward on x of `blocks` (one, or a coupling's H and G) as they run with
    the op `name`: the fused op takes both blocks in one call, cuDNN one after the other; in their compute dtype
    under autocast, with copies of their weights: the median of REPEATS after WARMUP, on CUDA events."""
    from kernels.dense import dense_blocks

    weights = [[c.weight.detach().clone().requires_grad_() for c in block.convs()] for block in blocks]
    biases = [[c.bias.detach().clone().requires_grad_() for c in block.convs()] for block in blocks]
    x = x.clone().requires_grad_()
    dtype = blocks[0].compute_dtype

    def outputs():
        if name == "fused":
            return dense_blocks(x, weights, biases)
        return [cudnn_dense_block(x, w, b) for w, b in zip(weights, biases, strict=True)]

    def step():
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            outs = outputs()
        sum(out.float().sum() for out in outs).backward()

    return _gpu_ms(step)
