"""The dense-block kernels against engine.model.irn.DenseBlock: outputs and every gradient, layouts, custom-op
registration, FLOP counts, launch counts and tracing. On a CPU the kernels run in Triton's interpreter, so
the shapes are small; every channel count IRN uses is covered."""

import math

import pytest
import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import FlopCounterMode

import kernels.dense as dense
from engine.model.irn import DenseBlock
from kernels.dense import dense_block, dense_block_backward, dense_block_forward, dense_blocks
from profiling.runtime.probe import set_fp32_precision
from tests.kernels.conftest import DEVICE, TOLERANCE, program_order

# (c_in, c_out, growth, batch, (H, W), input layout): IRN's F maps C - 3 -> 3 and G, H map 3 -> C - 3
# for C = 12, 48, 192. Growth 4 or 8 keeps the interpreter fast on the wide blocks; one block has the
# paper's 32. 3 x 7 x 9 pixels span two pixel tiles of the interpreter's 128.
CASES = [
    (3, 9, 8, 3, (7, 9), "channels_last"),
    (9, 3, 32, 2, (3, 5), "contiguous"),
    (3, 45, 4, 3, (1, 1), "slice"),
    (45, 3, 4, 1, (7, 9), "channels_last slice"),
    (3, 189, 4, 1, (3, 5), "contiguous"),
    (189, 3, 4, 2, (3, 5), "slice"),
]


# TF32 keeps 10 of fp32's 23 mantissa bits: each product off by up to 2**-9 of itself, sums of them by less
TF32_TOLERANCE = 2**-9


def reference_block(c_in, c_out, growth, dtype=torch.float32, seed=0):
    """A DenseBlock with random weights (a fresh one has a zero conv5), rounded to `dtype`; unit-variance
    activations keep both LeakyReLU branches busy."""
    block = DenseBlock(c_in, c_out, growth)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in convs(block):
            fan_in = conv.weight[0].numel()
            conv.weight.copy_((torch.randn(conv.weight.shape, generator=gen) / math.sqrt(fan_in)).to(dtype))
            conv.bias.copy_((0.1 * torch.randn(conv.bias.shape, generator=gen)).to(dtype))
    return block.to(DEVICE)


def convs(block):
    return [block.conv1, block.conv2, block.conv3, block.conv4, block.conv5]


def fast_params(block, dtype=torch.float32):
    weights = [conv.weight.detach().to(dtype).requires_grad_() for conv in convs(block)]
    biases = [conv.bias.detach().to(dtype).requires_grad_() for conv in convs(block)]
    return weights, biases


def laid_out(x, layout):
    """x (differentiably) in a memory layout the op must read in place."""
    if layout == "contiguous":
        return x
    if layout == "channels_last":
        return x.to(memory_format=torch.channels_last)
    wider = torch.cat([torch.randn_like(x[:, :3]), x], 1)  # x as the channel slice wider[:, 3:]
    if layout == "channels_last slice":
        wider = wider.contiguous(memory_format=torch.channels_last)
    return wider[:, 3:]


def assert_close_to_max(actual, expected, tol):
    """Every element within tol of expected's largest magnitude."""
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), rtol=0, atol=tol * expected.abs().max().item())


def run_both(block, x, dtype=torch.float32, layout="contiguous", grad=None):
    """Output and gradients (x, weights, biases) of the reference block in fp32 and of the fast op in dtype."""
    x_ref, x_fast = x.float().clone().requires_grad_(), x.to(dtype).clone().requires_grad_()
    weights, biases = fast_params(block, dtype)
    expected, out = block(x_ref), dense_block(laid_out(x_fast, layout), weights, biases)
    grad = torch.randn_like(expected) if grad is None else grad
    block.zero_grad()
    expected.backward(grad)
    out.backward(grad.to(dtype))
    grads_ref = [x_ref.grad] + [p.grad for conv in convs(block) for p in (conv.weight, conv.bias)]
    grads_fast = [x_fast.grad] + [p.grad for pair in zip(weights, biases, strict=True) for p in pair]
    return (out, grads_fast), (expected, grads_ref)


@pytest.mark.parametrize("c_in, c_out, growth, batch, size, layout", CASES)
def test_fp32_output_and_every_gradient_match_the_reference(c_in, c_out, growth, batch, size, layout):
    torch.manual_seed(0)
    block = reference_block(c_in, c_out, growth)
    x = torch.randn(batch, c_in, *size, device=DEVICE)
    (out, grads), (expected, grads_ref) = run_both(block, x, layout=layout)
    assert out.dtype == torch.float32
    layout_in = torch.channels_last if layout.startswith("channels_last") else torch.contiguous_format
    assert out.is_contiguous(memory_format=layout_in)  # the output follows the input's layout
    assert_close_to_max(out, expected, 1e-5)
    for actual, reference in zip(grads, grads_ref, strict=True):  # x, then w1, b1, ..., w5, b5
        assert actual.dtype == torch.float32
        assert_close_to_max(actual, reference, 1e-5)


HALF_CASES = [(3, 9, 8, 2, (3, 5), "channels_last"), (45, 3, 4, 1, (5, 3), "channels_last slice")]


class RoundActivations:
    """Rounds the reference's LeakyReLU outputs to `dtype` on the way forward (straight through backward):
    the fast op stores F_1..F_4 in the input's dtype, so without this a Z_k within rounding of 0 can take
    the other LeakyReLU branch in one of the two, and its slope 1 vs 0.2 makes a gradient differ by far
    more than the rounding."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __call__(self, module, inputs, output):
        return output + (output.to(self.dtype).float() - output).detach()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("c_in, c_out, growth, batch, size, layout", HALF_CASES)
def test_half_precision_matches_an_fp32_reference_on_the_same_rounded_values(
    c_in, c_out, growth, batch, size, layout, dtype
):
    """Inputs, weights, biases, the output gradient and the stored activations are the same rounded values
    on both sides; what remains is the op's own rounding: each output once (half an ulp), and dZ to the
    dtype for the dots (fp32 accumulation everywhere, G in fp32). Measured over three seeds: at most 7e-4
    of the largest value in fp16, 5e-3 in bf16, i.e. under one ulp of 1.0 (2**-10, 2**-7). Checked to
    tests/kernels/conftest.py's TOLERANCE, about two such ulps: 2e-3 in fp16, 1.6e-2 in bf16."""
    torch.manual_seed(1)
    block = reference_block(c_in, c_out, growth, dtype)
    block.lrelu.register_forward_hook(RoundActivations(dtype))
    x = torch.randn(batch, c_in, *size, device=DEVICE).to(dtype)
    grad = torch.randn(batch, c_out, *size, device=DEVICE).to(dtype).float()
    (out, grads), (expected, grads_ref) = run_both(block, x, dtype, layout, grad)
    assert out.dtype == dtype
    assert_close_to_max(out, expected, TOLERANCE[dtype])
    for actual, reference in zip(grads, grads_ref, strict=True):
        assert actual.dtype == dtype
        assert_close_to_max(actual, reference, TOLERANCE[dtype])


def test_autocast_runs_the_block_in_the_autocast_dtype_with_fp32_weights():
    """Under autocast the block runs in bf16 as the five convs would, the fp32 weights cast inside the
    kernels (biases are added in fp32): exactly the block on bf16 x and weights, with fp32 gradients."""
    torch.manual_seed(4)
    block = reference_block(3, 9, 8)
    x = torch.randn(1, 3, 3, 5, device=DEVICE)
    weights, biases = fast_params(block)
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        out = dense_block(x, weights, biases)
    half_weights, _ = fast_params(block, torch.bfloat16)
    same_biases = [b.detach().clone().requires_grad_() for b in biases]
    expected = dense_block(x.to(torch.bfloat16), half_weights, same_biases)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    for p, same in zip(weights + biases, half_weights + same_biases, strict=True):
        assert p.grad.dtype == torch.float32
        assert_close_to_max(p.grad, same.grad, 2**-8)  # the same sums; bf16 weights get bf16 gradients


@pytest.mark.parametrize("config", [0, 1])
@pytest.mark.parametrize("dtype, tf32", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False)])
def test_every_gpu_tile_config_gives_the_same_results(monkeypatch, fp32_precision_restored, config, dtype, tf32):
    """The interpreter normally runs larger tiles than a GPU does. With each of a GPU's configs (64 or 128
    pixels a forward tile, 32 or 64 a backward one) and its channel tiles (32-channel K steps in fp32, 64 in
    bf16; a pixel step of 32 in fp32 and 64 in bf16, or half that where the gradient's channels are strided, the
    features masked channel by channel (a growth not a multiple of 16) or the dots FMA loops), the channel loops
    of a 45-channel input and its block's 48- to 80-channel prefixes, and the pixel loops of 70 pixels, take
    several steps with ragged ends; the results are the reference's all the same: to fp32's rounding, to bf16's,
    and in TF32 (emulated in the interpreter's dots) to TF32's, about 2**-10 of the largest value."""
    monkeypatch.setattr(dense, "_INTERPRETER_TILES", False)
    monkeypatch.setattr(dense, "_FORWARD_CONFIGS", dense._GPU_FORWARD_CONFIGS[config : config + 1])
    monkeypatch.setattr(dense, "_BACKWARD_CONFIGS", dense._GPU_BACKWARD_CONFIGS[config : config + 1])
    set_fp32_precision(torch.backends.cudnn.conv, "tf32" if tf32 else "ieee")
    assert dense._k_tile(dtype) == (32 if dtype == torch.float32 else 64)
    torch.manual_seed(5)
    block = reference_block(45, 3, 8, dtype)
    block.lrelu.register_forward_hook(RoundActivations(dtype))  # a no-op in fp32
    x = torch.randn(2, 45, 5, 7, device=DEVICE).to(dtype)
    grad = torch.randn(2, 3, 5, 7, device=DEVICE).to(dtype).float()
    (out, grads), (expected, grads_ref) = run_both(block, x, dtype, "channels_last", grad)
    tol = TF32_TOLERANCE if tf32 else TOLERANCE[dtype]
    assert_close_to_max(out, expected, tol)
    for actual, reference in zip(grads, grads_ref, strict=True):
        assert_close_to_max(actual, reference, tol)


@triton.jit
def _dividing(p, q, magic, shift, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(q + offsets, dense._divide(tl.load(p + offsets), magic, shift))


@pytest.mark.parametrize(
    "c_in, c_out, dtype, gpu_tiles",
    [(3, 9, torch.bfloat16, True), (45, 3, torch.float16, True), (45, 3, torch.bfloat16, False)],
)
def test_a_half_precision_backward_at_growth_32_needs_no_program_order(monkeypatch, c_in, c_out, dtype, gpu_tiles):
    """At IRN's growth of 32 the previous conv's output straddles an input-gradient channel tile (x padded to
    16 channels: conv 2's output at 48..80 against tiles of 64): the step that completes its dZ in 16-bit
    must give the same bits with its programs run in reverse, as a GPU may run them side by side in any
    order (each of these cases failed so when its 16-bit dZ was packed into G's fp32 slots)."""
    if gpu_tiles:
        monkeypatch.setattr(dense, "_INTERPRETER_TILES", False)
        monkeypatch.setattr(dense, "_FORWARD_CONFIGS", dense._GPU_FORWARD_CONFIGS[:1])
        monkeypatch.setattr(dense, "_BACKWARD_CONFIGS", dense._GPU_BACKWARD_CONFIGS[:1])
    weights, biases = fast_params(reference_block(c_in, c_out, 32, dtype), dtype)
    x = torch.randn(1, c_in, 4, 5, generator=torch.Generator().manual_seed(1)).to(dtype)
    out, features = dense_block_forward(x, weights, biases, 0.2)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    in_grid_order = dense_block_backward(grad, features, weights, 0.2, False, True)
    with program_order("reversed"):
        reordered = dense_block_backward(grad, features, weights, 0.2, False, True)
    for a, e in zip(reordered, in_grid_order, strict=True):
        assert torch.equal(a, e)


@pytest.mark.parametrize("d", [1, 2, 3, 7, 72, 144, 1000, 2**16 + 1, 2**30 + 3, 2**31 - 1])
def test_the_pixels_divide_by_a_multiply_high_exactly_up_to_2_31(d):
    """_divide, with _divisor's magic number, against integer division: next to multiples of d, at 0 and at
    2**31 - 1, and at random."""
    near = [k * d + e for k in (1, 2, 3, 1000, (2**31 - 1) // d) for e in (-1, 0, 1)]
    random = torch.randint(0, 2**31 - 1, (64,), generator=torch.Generator().manual_seed(d)).tolist()
    p = [0, 1, 2**31 - 1] + near + random
    p = torch.tensor(sorted({v for v in p if 0 <= v < 2**31}), dtype=torch.int32, device=DEVICE)
    p = torch.cat([p, p[:1].expand(128 - len(p))])
    q = torch.empty_like(p)
    _dividing[(1,)](p, q, *dense._divisor(d), BLOCK=128)
    assert torch.equal(q, p // d)


def test_tuning_takes_the_fastest_tiles_once_per_key_and_never_in_a_capture(monkeypatch):
    """tune() with a stand-in timer (64-pixel tiles the fastest): each launch with a choice timed once per
    candidate, the op's launches then take the choice; a second shape of the same keys times nothing; inside
    a CUDA-graph capture nothing is timed; adopt_configs replaces the choices (another rank's)."""
    monkeypatch.setattr(dense, "_CHOSEN", {})
    monkeypatch.setattr(dense, "_FORWARD_CONFIGS", dense._GPU_FORWARD_CONFIGS)
    monkeypatch.setattr(dense, "_BACKWARD_CONFIGS", dense._GPU_BACKWARD_CONFIGS)
    timed = []

    def stand_in(run):
        launch, config = run.args
        timed.append((launch.key, config.kwargs["BLOCK_M"]))
        return 1.0 if config.kwargs["BLOCK_M"] == 64 else 2.0

    block = reference_block(3, 9, 4, torch.bfloat16)
    weights, biases = fast_params(block, torch.bfloat16)
    x = torch.randn(2, 3, 5, 7, device=DEVICE, dtype=torch.bfloat16)
    forward, backward, no_dx = dense.block_launches(x, [weights], [biases], False)
    # 11 keys: without dx, steps 5 to 2 are the same launches; 2 configs each
    assert len(dense.tune(forward + backward + no_dx, stand_in)) == 11 and len(timed) == 22
    assert dense.tile_sizes(forward) == dense.tile_sizes(backward) == dense.tile_sizes(no_dx) == [64] * 5
    ran = []
    monkeypatch.setattr(dense, "_launch", lambda launch, config: ran.append(config.kwargs.get("BLOCK_M")))
    dense._run(forward)
    assert ran == [None] + [64] * 5  # the packing has no choice
    other = torch.randn(2, 3, 5, 8, device=DEVICE, dtype=torch.bfloat16)  # 80 pixels: the same bucket as 70
    same_keys = dense.block_launches(other, [weights], [biases], False)
    assert dense.tune([launch for group in same_keys for launch in group], stand_in) == {} and len(timed) == 22
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    wider = torch.randn(2, 3, 9, 9, device=DEVICE, dtype=torch.bfloat16)
    wider = dense.block_launches(wider, [weights], [biases], False)
    assert dense.tune(wider[0], stand_in) == {} and len(timed) == 22
    # 162 pixels, a bucket never tuned: the choices of 70 pixels, not the backward's first candidate (32)
    assert dense.tile_sizes(wider[1]) == [64] * 5 and dense.launch_configs(wider[1][1])[0].kwargs["BLOCK_M"] == 32
    rank_zeros = {forward[1].key: {"BLOCK_M": 128}}  # the others: their first candidates, 64 pixels in bf16
    dense.adopt_configs(rank_zeros)
    assert dense.tile_sizes(forward) == [128, 64, 64, 64, 64] and dense.chosen_configs() == rank_zeros


class CountLaunches:
    """Counts the launches of the two Triton kernels, each inside a profiler range named LAUNCH."""

    def __init__(self, monkeypatch):
        self.launches = []
        for kernel in (dense._pack_kernel, dense._conv3x3_kernel, dense._conv3x3_backward_kernel):
            monkeypatch.setattr(kernel, "run", self.counting(kernel.run, kernel.fn.__name__))

    def counting(self, run, name):
        def counted(*args, **kwargs):
            self.launches.append(name)
            with torch.profiler.record_function(LAUNCH):
                return run(*args, **kwargs)

        return counted


LAUNCH = "triton launch"
# torch ops that allocate or make views, and launch nothing on a GPU
NO_LAUNCH = {"empty", "empty_strided", "new_empty", "slice", "view", "as_strided", "alias", "detach", "select"}
NO_LAUNCH |= {"transpose"}


def torch_ops(profile):
    """The outermost torch ops the custom ops run themselves, not inside a Triton launch (whose interpreter
    copies tensors around): (those that would launch a GPU kernel, all of them)."""
    ops = []
    for event in profile.events():
        ancestors, parent = [], event.cpu_parent
        while parent is not None:
            ancestors.append(parent.name)
            parent = parent.cpu_parent
        inside = [name for name in ancestors if name.startswith("aten::")]
        in_op = any(name.startswith("irn::") for name in ancestors)
        if in_op and LAUNCH not in ancestors and not inside and event.name.startswith("aten::"):
            ops.append(event.name)
    return [op for op in ops if op[6:] not in NO_LAUNCH], ops


# weights in fp32 (their gradient summed into place) or bf16 (cast into place)
@pytest.mark.parametrize("splits, dtype", [(1, torch.float32), (4, torch.float32), (1, torch.bfloat16)])
def test_launch_counts_per_block_and_gradients_over_pixel_splits(monkeypatch, splits, dtype):
    """Forward: 6 launches (the weights' packing, which copies x into the buffer, then the convs). Backward:
    6 (the packing, then the steps), plus one sum of the partials
    when the weight gradients are reduced in more than one pixel split (here 70 pixels in 1 or 4), and one
    cast when the weights are not fp32; no other torch op that would launch a kernel. LAUNCHES counts
    exactly these. The gradients are right either way."""
    monkeypatch.setattr(dense, "PIXELS_PER_SPLIT", 70 // splits + 1)
    assert dense._pixel_splits(70)[0] == splits
    counter = CountLaunches(monkeypatch)
    block = reference_block(3, 9, 8, dtype)
    block.lrelu.register_forward_hook(RoundActivations(dtype))  # a no-op in fp32
    x = torch.randn(2, 3, 5, 7, device=DEVICE).to(dtype).float()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as forward_ops:
        x_fast = x.to(dtype).clone().requires_grad_()
        weights, biases = fast_params(block, dtype)
        out = dense_block(x_fast, weights, biases)
    assert counter.launches == ["_pack_kernel"] + ["_conv3x3_kernel"] * 5
    grad = torch.randn_like(out).float()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as backward_ops:
        out.backward(grad.to(dtype))
    assert counter.launches[6:] == ["_pack_kernel"] + ["_conv3x3_backward_kernel"] * 5
    (forward_compute, forward_all), (backward_compute, backward_all) = torch_ops(forward_ops), torch_ops(backward_ops)
    assert "aten::empty_strided" in forward_all and "aten::empty_strided" in backward_all  # F and G: seen
    assert forward_compute == []
    assert backward_compute == ["aten::sum"] * (splits > 1) + ["aten::copy_"] * (dtype != torch.float32)
    assert dense.LAUNCHES["irn::dense_block"]((x_fast, weights, biases, 0.2)) == 6
    features = torch.empty(2, 0, 5, 7, device="meta")  # all LAUNCHES reads of it: its shape
    backward_args = (grad, features, weights, 0.2, False, True)
    assert dense.LAUNCHES["irn::dense_block_backward"](backward_args) == 6 + len(backward_compute)
    x_ref = x.clone().requires_grad_()
    block(x_ref).backward(grad)
    tol = TOLERANCE[dtype] if dtype != torch.float32 else 1e-5
    assert_close_to_max(x_fast.grad, x_ref.grad, tol)
    for conv, weight, bias in zip(convs(block), weights, biases, strict=True):
        assert_close_to_max(weight.grad, conv.weight.grad, tol)
        assert_close_to_max(bias.grad, conv.bias.grad, tol)


def pair_and_singles(dtype, x, grads, growth, autocast=None):
    """(what dense_blocks gives on two blocks of a coupling's H and G shapes, what dense_block gives on each), with
    parameters in `dtype`, under autocast to `autocast` if given: the two outputs, then x's gradient and every
    weight's and bias's, after a backward of both outputs."""
    results = []
    for together in (True, False):
        x_fast = x.clone().requires_grad_()
        params = [fast_params(reference_block(3, 9, growth, dtype, seed=seed), dtype) for seed in (1, 2)]
        weights, biases = [w for w, _ in params], [b for _, b in params]
        with torch.autocast(torch.device(DEVICE).type, dtype=autocast, enabled=autocast is not None):
            outs = dense_blocks(x_fast, weights, biases) if together else [dense_block(x_fast, *p) for p in params]
        torch.autograd.backward(outs, [g.to(outs[0].dtype) for g in grads])
        results.append([*outs, x_fast.grad, *(p.grad for p in sum(weights + biases, []))])
    return results


# (dtype, autocast, a GPU's tiles, pixel splits, growth): IRN's growth of 32 makes several input-gradient
# channel tiles of a GPU's 64 (16 + 4 x 32 channels)
PAIR_CASES = [
    (torch.float32, None, False, 1, 8),
    (torch.bfloat16, None, True, 3, 32),
    (torch.float32, torch.bfloat16, False, 3, 8),
]


@pytest.mark.parametrize("dtype, autocast, gpu_tiles, splits, growth", PAIR_CASES)
def test_two_blocks_in_one_call_give_each_block_s_own_results_bit_for_bit(
    monkeypatch, nan_allocations, dtype, autocast, gpu_tiles, splits, growth
):
    """dense_blocks on two blocks that read the same x (a coupling's H and G): the launches of one block (6
    forward, 6 backward), each running both blocks' programs, in shuffled order on NaN-filled buffers; each
    output and gradient is what the block's own dense_block call gives (x's: the sum of both, which autograd
    adds, after casting each back to fp32 under autocast), bit for bit, with a GPU's tiles too, and with each
    block's 35 pixels in one or three splits of weight-gradient partials."""
    monkeypatch.setattr(dense, "PIXELS_PER_SPLIT", 35 // splits + 1)
    assert dense._pixel_splits(35)[0] == splits
    if gpu_tiles:
        monkeypatch.setattr(dense, "_INTERPRETER_TILES", False)
        monkeypatch.setattr(dense, "_FORWARD_CONFIGS", dense._GPU_FORWARD_CONFIGS[:1])
        monkeypatch.setattr(dense, "_BACKWARD_CONFIGS", dense._GPU_BACKWARD_CONFIGS[:1])
    x = torch.randn(1, 3, 5, 7, generator=torch.Generator().manual_seed(3)).to(DEVICE, dtype)
    grads = [torch.randn(1, 9, 5, 7, generator=torch.Generator().manual_seed(s)).to(DEVICE, dtype) for s in (4, 5)]
    counter = CountLaunches(monkeypatch)
    with program_order("shuffled"), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as ops:
        together, apart = pair_and_singles(dtype, x, grads, growth, autocast)
    for a, e in zip(together, apart, strict=True):
        assert a.shape == e.shape and torch.equal(a, e)
    forward, backward = ["_pack_kernel", *["_conv3x3_kernel"] * 5], ["_pack_kernel", *["_conv3x3_backward_kernel"] * 5]
    assert counter.launches == forward + backward + forward * 2 + backward * 2  # the pair's, then the singles
    # each backward call's own: a sum of the splits, a cast into bf16 weights' gradients; no add of x's gradients
    per_call = ["aten::sum"] * (splits > 1) + ["aten::copy_"] * (dtype != torch.float32)
    assert [op for op in torch_ops(ops)[0] if op != "aten::fill_"] == per_call * 3  # fill_: nan_allocations' own


def test_two_blocks_each_take_their_own_half_of_the_samples():
    """The op on two blocks given different samples (the first block's, then the second's): each output half, dx
    half and weight gradient is what the block's own call gives on its samples, bit for bit, with and without
    dx; wrong counts of weights or samples are refused."""
    params = [fast_params(reference_block(3, 9, 4, seed=seed)) for seed in (1, 2)]
    weights, biases = ([[t.detach() for t in p[i]] for p in params] for i in (0, 1))
    xs = [torch.randn(1, 3, 4, 5, generator=torch.Generator().manual_seed(s)).to(DEVICE) for s in (3, 4)]
    grads = [torch.randn(1, 9, 4, 5, generator=torch.Generator().manual_seed(s)).to(DEVICE) for s in (5, 6)]
    out, features = dense_block_forward(torch.cat(xs), weights[0] + weights[1], biases[0] + biases[1], 0.2)
    singles = [dense_block_forward(x, w, b, 0.2) for x, w, b in zip(xs, weights, biases, strict=True)]
    assert torch.equal(out, torch.cat([o for o, _ in singles]))
    for input_grad in (True, False):
        dx, flat = dense_block_backward(torch.cat(grads), features, weights[0] + weights[1], 0.2, False, input_grad)
        alone = [dense_block_backward(g, f, w, 0.2, False, input_grad)
                 for g, (_, f), w in zip(grads, singles, weights, strict=True)]  # fmt: skip
        assert torch.equal(flat, torch.cat([f for _, f in alone]))
        assert torch.equal(dx, torch.cat([d for d, _ in alone])) if input_grad else dx.numel() == 0
    with pytest.raises(ValueError, match="5 weights a block, for one or two blocks, got 15"):
        dense_block_backward(out, features, weights[0] * 3, 0.2, False, True)
    with pytest.raises(ValueError, match="an even number of samples, half each, got 1"):
        dense_block_backward(out[:1], features[:1], weights[0] + weights[1], 0.2, False, True)


def test_two_blocks_in_one_call_count_one_block_s_launches_and_two_blocks_flops_and_bytes():
    """On meta tensors, two blocks in one call (each on its copy of x) against one: the same launches, twice the
    FLOPs and twice the bytes."""
    x, weights, biases = meta_block((2, 3, 36, 36), growth=8, c_out=9)
    counts = []
    for blocks in (1, 2):
        stacked = torch.cat([x] * blocks)
        out, features = dense._forward_outputs(stacked, weights * blocks, biases * blocks)
        forward = (stacked, weights * blocks, biases * blocks, 0.2)
        backward = (out, features, weights * blocks, 0.2, False, True)
        with FlopCounterMode(display=False) as counter:
            torch.ops.irn.dense_block(*forward)
            torch.ops.irn.dense_block_backward(*backward)
        launches = [
            dense.LAUNCHES[op](args)
            for op, args in (("irn::dense_block", forward), ("irn::dense_block_backward", backward))
        ]
        moved = [
            dense.TRAFFIC[op](args)
            for op, args in (("irn::dense_block", forward), ("irn::dense_block_backward", backward))
        ]
        counts.append((launches, counter.get_total_flops(), moved))
    (launches_1, flops_1, moved_1), (launches_2, flops_2, moved_2) = counts
    assert launches_2 == launches_1
    assert flops_2 == 2 * flops_1 > 0
    assert moved_2 == [2 * moved_1[0], 2 * moved_1[1]]


# opcheck's tests but its static-shape AOTAutograd one, which the dynamic-shape one covers at half the time
OPCHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def small_inputs(x_requires_grad=True, channels_last=False, seed=5):
    torch.manual_seed(seed)
    block = reference_block(3, 9, 4, seed=seed)
    x = torch.randn(1, 3, 3, 4, device=DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weights, biases = fast_params(block)
    return block, x.requires_grad_(x_requires_grad), weights, biases


def test_forward_op_is_registered_correctly():
    """Schema, fake implementation (shapes, dtypes and strides), autograd registration, and tracing by
    AOTAutograd with dynamic shapes, forward and backward; the fake's strides for a channels_last input."""
    _, x, weights, biases = small_inputs()
    torch.library.opcheck(dense_block_forward, (x, weights, biases, 0.2), test_utils=OPCHECKS)
    _, x, weights, biases = small_inputs(channels_last=True)
    torch.library.opcheck(dense_block_forward, (x, weights, biases, 0.2), test_utils="test_faketensor")
    pair = (torch.cat([x, x]), weights * 2, biases * 2, 0.2)  # two blocks, each on its copy of x
    torch.library.opcheck(dense_block_forward, pair, test_utils=("test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("channels_last, input_grad, blocks", [(False, True, 1), (True, True, 1), (False, False, 1),
                                                               (True, True, 2)])  # fmt: skip
def test_backward_op_is_registered_correctly(channels_last, input_grad, blocks):
    _, x, weights, biases = small_inputs(x_requires_grad=False, channels_last=channels_last)
    weights = [w.detach() for w in weights] * blocks
    x = torch.cat([x] * blocks)
    out, features = dense_block_forward(x, weights, [b.detach() for b in biases] * blocks, 0.2)
    args = (torch.randn_like(out), features, weights, 0.2, channels_last, input_grad)
    full = not channels_last and input_grad and blocks == 1  # the fake's layouts are all the others need
    torch.library.opcheck(dense_block_backward, args, test_utils=OPCHECKS if full else "test_faketensor")


def flops(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("x_needs_grad", [True, False])
def test_flop_counts_equal_the_five_reference_convs(x_needs_grad):
    """FlopCounterMode counts the op as it counts the five convs it replaces: forward, and the input and
    weight gradients of the backward (conv 1's input gradient only when x needs one, which the op then
    skips, still training the weights)."""
    block, x, weights, biases = small_inputs(x_requires_grad=x_needs_grad)
    x_ref = x.detach().clone().requires_grad_(x_needs_grad)
    expected, out = [], []
    expected.append(flops(lambda: expected.append(block(x_ref))))
    out.append(flops(lambda: out.append(dense_block(x, weights, biases))))
    grad = torch.randn_like(out[0])
    assert out[1] == expected[1] == sum(2 * 3 * 4 * w.numel() for w in weights)  # 2 B H W per weight
    assert flops(lambda: out[0].backward(grad)) == flops(lambda: expected[0].backward(grad))
    for conv, weight, bias in zip(convs(block), weights, biases, strict=True):
        assert_close_to_max(weight.grad, conv.weight.grad, 1e-5)
        assert_close_to_max(bias.grad, conv.bias.grad, 1e-5)
    assert x.grad is None if not x_needs_grad else x.grad.shape == x.shape


def test_compiles_with_aot_autograd_without_a_graph_break():
    """torch.compile with fullgraph=True traces the forward and backward ops through their fake kernels;
    the compiled results are the eager ones."""
    _, x, weights, biases = small_inputs()

    def loss(x, weights, biases):
        return (dense_block(x * 2, weights, biases) ** 2).sum()

    eager = loss(x, weights, biases)
    grads_eager = torch.autograd.grad(eager, [x, *weights, *biases])
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)(x, weights, biases)
    grads_compiled = torch.autograd.grad(compiled, [x, *weights, *biases])
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=0)
    for a, b in zip(grads_compiled, grads_eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_wrong_weights_are_refused():
    _, x, weights, biases = small_inputs(x_requires_grad=False)
    with pytest.raises(ValueError, match="5 weights a block, for one or two blocks, got 4"):
        dense_block(x, weights[:4], biases[:4])
    with pytest.raises(ValueError, match="a bias for each weight, got 5 and 4"):
        dense_block(x, weights, biases[:4])
    with pytest.raises(ValueError, match=r"conv 3 .* needs a weight \(4, 11, 3, 3\)"):
        dense_block(x, weights[:2] + [weights[2][:, :10]] + weights[3:], biases)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        dense_block(x[0], weights, biases)
    with pytest.raises(ValueError, match=r"conv 5 .* needs a weight \(9, 19, 3, 3\)"):  # two blocks: the same shapes
        dense_blocks(x, [weights, weights[:4] + [weights[4][:8]]], [biases, biases])


def test_aot_variants_cover_every_kernel_dtype_and_flag():
    """Every constexpr combination the launchers use is in the list, for features in each dtype with weights
    in that dtype or fp32 (autocast), as ASTSource takes it; with attrs=True, with the JIT's alignment."""
    from triton.compiler import ASTSource

    for name, fn, signature, constexprs, attrs in dense.aot_variants(attrs=True):
        ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
        assert all(signature[fn.arg_names[i]] != "constexpr" for (i,) in attrs), name
    variants = dense.aot_variants()
    assert len({name for name, *_ in variants}) == len(variants)
    seen = set()
    for _, fn, signature, constexprs in variants:
        ASTSource(fn, signature, constexprs=constexprs)
        assert set(signature) == set(fn.arg_names)
        assert all(signature[k] == "constexpr" for k in constexprs)
        if fn.__name__ == "_pack_kernel":
            seen.add((fn.__name__, constexprs["COPY_PIXELS"] > 0, signature["packed"], signature["w1"]))
            continue
        tiling = ("BLOCK", "C_", "TAP_")  # tiles, and the channel counts they follow
        flags = tuple(sorted((k, v) for k, v in constexprs.items() if k.isupper() and not k.startswith(tiling)))
        features = signature["src" if "src" in signature else "feat"]
        seen.add((fn.__name__, flags, features, signature["packed"]))
    forward_flags = [(True, 1), (False, 1), (True, 2), (False, 2)]  # (ACTIVATION: convs 1-4, 5; SUBNETS: F, G and H)
    backward_flags = [(False, True, True), (True, True, True), (True, False, True), (True, False, False)]
    for features, weight in [(t, t) for t in ("*fp32", "*fp16", "*bf16")] + [("*fp16", "*fp32"), ("*bf16", "*fp32")]:
        for copying in (True, False):  # the forward's packing copies x, the backward's does not
            assert ("_pack_kernel", copying, features, weight) in seen  # packed into the features' dtype
        for precision in ("ieee", "tf32") if features == "*fp32" else ("ieee",):
            for a, subnets in forward_flags:
                flags = tuple(sorted([("ACTIVATION", a), ("PRECISION", precision), ("SUBNETS", subnets)]))
                assert ("_conv3x3_kernel", flags, features, features) in seen
            for acc, tail, dx in backward_flags:  # (ACCUMULATE, SLOPE_TAIL, INPUT_GRAD): conv 5, 2-4, 1, 1 no dx
                flags = [("ACCUMULATE", acc), ("INPUT_GRAD", dx), ("PRECISION", precision), ("SLOPE_TAIL", tail)]
                assert ("_conv3x3_backward_kernel", tuple(sorted(flags)), features, features) in seen


@pytest.mark.parametrize("blocks", [1, 2])
def test_each_launch_declares_the_work_its_programs_do(monkeypatch, blocks):
    """Launch.work, which the forecast (profiling/bench/forecast.py) multiplies out, against the interpreter: the
    multiply-accumulates of every tl.dot the launch's programs run, counted as they run, forward and backward,
    for one block and for two in one call."""
    counted = []

    def counting_mma(a, b, acc, precision):
        counted.append(a.shape[0] * a.shape[1] * b.shape[1])
        return mma(a, b, acc, precision)

    mma = dense._mma
    monkeypatch.setattr(dense, "_mma", counting_mma)
    block = reference_block(45, 3, 8)
    x = torch.randn(2, 45, 5, 7, device=DEVICE)
    weights, biases = fast_params(block)
    weights, biases = [w.detach() for w in weights] * blocks, [b.detach() for b in biases] * blocks
    out, features = dense_block_forward(x, weights, biases, 0.2)
    backward = (torch.randn_like(out), features, weights, 0.2, False, True)
    launches = dense.call_launches("irn::dense_block", (x, weights, biases, 0.2), False)
    launches += dense.call_launches("irn::dense_block_backward", backward, False)
    for launch in launches:
        counted.clear()
        dense._run([launch])
        (config,) = dense.launch_configs(launch)
        meta = launch.constexprs | config.kwargs
        declared = launch.work(meta)
        assert sum(programs for programs, _ in declared) == math.prod(launch.grid(meta))
        macs = [programs * trips * per_trip for programs, loops in declared for trips, per_trip in loops.values()]
        assert sum(macs) == sum(counted)


def meta_block(shape, growth=4, c_out=3):
    c_in = shape[1]
    weights = [torch.empty(growth if k < 4 else c_out, c_in + k * growth, 3, 3, device="meta") for k in range(5)]
    return torch.empty(shape, device="meta"), weights, [torch.empty(w.shape[0], device="meta") for w in weights]


@pytest.mark.parametrize(
    "shape, message",
    [
        ((2**16, 3, 2**8, 2**8), "index pixels in int32: 65536 x 256 x 256 = 4,294,967,296 pixels"),
        ((1, 3, 2**14, 2**13), r"index a sample in int32: \(1, 32, 16384, 8192\) spans 2\*\*31"),  # the buffer
    ],
)
def test_what_int32_indexing_cannot_reach_is_refused_before_any_launch(shape, message):
    """On meta tensors (nothing allocated): 2**32 pixels; a feature buffer of 32 channels x 2**27 pixels."""
    x, weights, biases = meta_block(shape)
    with pytest.raises(ValueError, match=message):
        dense.call_launches("irn::dense_block", (x, weights, biases, 0.2), False)
    out, features = dense._forward_outputs(x, weights, biases)
    with pytest.raises(ValueError, match=message):
        dense.call_launches("irn::dense_block_backward", (out, features, weights, 0.2, False, True), False)
    x, weights, biases = meta_block((shape[0], 3, shape[2] // 2, shape[3] // 2))  # a quarter: within reach
    assert len(dense.call_launches("irn::dense_block", (x, weights, biases, 0.2), False)) == 6
