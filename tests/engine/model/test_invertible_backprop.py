"""Backprop by inversion (engine/model/invertible_backprop.py) against standard backprop through the same FrEIA
graph."""

import pytest
import torch
import torch.nn as nn
from FrEIA.modules import HaarDownsampling, InvertibleModule

import engine
from engine.model.execution import set_subnet_precision, use_invertible_backprop
from engine.model.invertible_backprop import reconstruction_errors, run_inverting, saved_bytes
from engine.model.losses import irn_losses, network_passes
from tests.official_irn import randomize

CFG = {"lambda_fit": 16.0, "lambda_ce": 1.0, "lambda_rec": 1.0}
# fp64: relative to each tensor's largest entry; fp32: the same, looser (the inverse rounds in fp32)
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}
SHAPES = [(2, 2), (4, 2), (8, 1)]  # (scale, blocks per stage)


def inverting_rescaler(scale, blocks, growth=8):
    """A Rescaler with --invertible-backprop's setting on (engine.model.execution.use_invertible_backprop)."""
    return use_invertible_backprop(engine.build(scale, blocks_per_stage=blocks, growth=growth))


def pair(scale, blocks, dtype=torch.float64, std=0.05):
    """The same randomised weights in a standard and an inverting Rescaler."""
    reference = randomize(engine.build(scale, blocks_per_stage=blocks, growth=8), std=std, seed=scale).to(dtype)
    model = inverting_rescaler(scale, blocks).to(dtype)
    model.load_state_dict(reference.state_dict())
    return reference, model


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def batch(scale, dtype=torch.float64, size=16):
    g = torch.Generator().manual_seed(1)
    hr = torch.rand(2, 3, size, size, generator=g, dtype=dtype)
    noise = torch.randn(2, 3 * scale**2 - 3, size // scale, size // scale, generator=g, dtype=dtype)
    return hr, noise, torch.nn.functional.avg_pool2d(hr, scale)


def step(model, hr, noise, lr_ref):
    """The training step's forward and losses: (y, z, reconstruction), total loss."""
    y, z, reconstruction = network_passes(model, hr, noise)
    return (y, z, reconstruction), sum(irn_losses(y, z, reconstruction, hr, lr_ref, **CFG).values())


def step_grads(model, hr, noise, lr_ref):
    model.zero_grad(set_to_none=True)
    outs, loss = step(model, hr, noise, lr_ref)
    loss.backward()
    return outs, [p.grad.clone() for p in trainable(model)]


def relative_errors(actual, expected):
    """Per tensor, the largest difference relative to the expected tensor's largest entry."""
    errors = []
    for a, b in zip(actual, expected, strict=True):
        assert b.abs().max() > 0  # a zero gradient would compare vacuously
        errors.append(((a - b).abs().max() / b.abs().max()).item())
    return errors


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("rev", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("scale,blocks", SHAPES)
def test_one_pass_output_and_gradients_equal_standard_backprop(scale, blocks, rev, dtype):
    reference, inverting = pair(scale, blocks, dtype)
    g = torch.Generator().manual_seed(2)
    shape = (2, 3 * scale**2, 3, 2) if rev else (2, 3, 3 * scale, 2 * scale)
    x = torch.randn(shape, generator=g, dtype=dtype).requires_grad_()
    results = []
    for model in (reference, inverting):
        out = model(x, rev=rev)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
        results.append((out, torch.autograd.grad((out * weights).sum(), [x, *trainable(model)])))
    (out_ref, grads_ref), (out_inv, grads_inv) = results
    assert out_inv.grad_fn is not None and type(out_inv.grad_fn).__name__ != type(out_ref.grad_fn).__name__
    assert torch.equal(out_inv, out_ref)  # bit for bit: the forward is the same calls
    assert max(relative_errors(grads_inv, grads_ref)) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("scale,blocks", SHAPES)
def test_training_step_composes_both_inverted_passes(scale, blocks, dtype):
    """HR -> (LR, z), then (Q(LR), z') -> HR: the second pass's input gradient flows into the first pass's
    output through the straight-through quantiser; the HR input requires no grad."""
    reference, inverting = pair(scale, blocks, dtype)
    hr, noise, lr_ref = batch(scale, dtype)
    outs_ref, grads_ref = step_grads(reference, hr, noise, lr_ref)
    outs_inv, grads_inv = step_grads(inverting, hr, noise, lr_ref)
    for a, b in zip(outs_inv, outs_ref, strict=True):
        assert torch.equal(a, b)
    assert max(relative_errors(grads_inv, grads_ref)) < TOLERANCE[dtype]
    assert hr.grad is None


def test_gradients_reach_each_parameter_once_per_backward_and_accumulate():
    """Each parameter's AccumulateGrad runs once per backward (what DDP's hooks count on) with the sum of
    both passes' contributions, and a second backward adds to .grad as usual."""
    reference, inverting = pair(2, 2)
    hr, noise, lr_ref = batch(2)
    _, expected = step_grads(reference, hr, noise, lr_ref)
    calls = {}
    for p in trainable(inverting):
        p.register_post_accumulate_grad_hook(lambda p: calls.__setitem__(p, calls.get(p, 0) + 1))
    inverting.zero_grad(set_to_none=True)
    for _ in range(2):
        step(inverting, hr, noise, lr_ref)[1].backward()
    assert sorted(calls.values()) == [2] * len(expected)
    assert max(relative_errors([p.grad / 2 for p in trainable(inverting)], expected)) < 1e-10


def test_distributed_data_parallel_sees_ordinary_gradients():
    """DDP (one gloo rank in this process) around the inverting model: its reducer marks every parameter
    ready exactly once per backward, and the gradients equal standard backprop's."""
    import torch.distributed as dist

    reference, inverting = pair(2, 1, torch.float32)
    hr, noise, lr_ref = batch(2, torch.float32, size=8)
    _, expected = step_grads(reference, hr, noise, lr_ref)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(inverting)
        for _ in range(2):  # a second step: the reducer must have finished the first cleanly
            _, actual = step_grads(ddp, hr, noise, lr_ref)
    finally:
        dist.destroy_process_group()
    assert max(relative_errors(actual, expected)) < 1e-4


def test_inputs_and_parameters_with_or_without_grad():
    reference, inverting = pair(4, 1)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    for model in (reference, inverting):
        model.requires_grad_(False)
    # only the input requires grad: its gradient, and no parameter gradient
    x_ref, x_inv = x.clone().requires_grad_(), x.clone().requires_grad_()
    reference(x_ref).square().sum().backward()
    inverting(x_inv).square().sum().backward()
    assert max(relative_errors([x_inv.grad], [x_ref.grad])) < 1e-10
    assert all(p.grad is None for p in inverting.parameters())
    # nothing requires grad, or grad is off: the plain sequence, no autograd node
    assert inverting(x).grad_fn is None and torch.equal(inverting(x), reference(x))
    inverting.requires_grad_(True)
    with torch.no_grad():
        assert torch.equal(inverting(x), reference(x))


def test_saves_under_40_percent_of_the_activation_bytes_whatever_the_depth():
    """Bytes autograd keeps for backward after a x4 step's forward (both passes and the losses), each
    storage once, parameters left out: the inverted step keeps the passes' outputs and the losses' own
    tensors, which do not grow with the number of blocks."""
    hr, noise, lr_ref = batch(4, torch.float32, size=32)
    kept = {}
    for blocks in (1, 2):
        for model in pair(4, blocks, torch.float32):
            weights = [*model.parameters(), *model.buffers()]
            _, kept[blocks, model.invertible_backprop] = saved_bytes(step, model, hr, noise, lr_ref, exclude=weights)
    for blocks in (1, 2):
        assert kept[blocks, True] <= 0.4 * kept[blocks, False], kept
    assert kept[1, True] == kept[2, True] < 10 * hr.nbytes
    assert kept[2, False] > kept[1, False]


def test_bf16_subnets_gradients_match_standard_backprop_with_the_same_subnets():
    """Dense blocks in bf16, invertible stream in fp32: the recomputed forward runs them in bf16 again, so
    the gradients stay close to standard bf16 backprop's, much closer than bf16 is to fp32."""
    reference, inverting = pair(4, 2, torch.float32, std=0.02)
    hr, noise, lr_ref = batch(4, torch.float32)
    _, fp32 = step_grads(reference, hr, noise, lr_ref)
    for model in (reference, inverting):
        set_subnet_precision(model, "bf16")
    outs_ref, grads_ref = step_grads(reference, hr, noise, lr_ref)
    outs_inv, grads_inv = step_grads(inverting, hr, noise, lr_ref)
    for a, b in zip(outs_inv, outs_ref, strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    # Inversion moves the bf16 activations by bf16 roundings (engine/model/invertible_backprop.py, Numerics): the
    # gradients move far less than bf16 moves them from fp32's, as a whole and tensor by tensor.
    bf16_error, inversion_error = global_error(grads_ref, fp32), global_error(grads_inv, grads_ref)
    assert bf16_error > 1e-2  # bf16 is in effect
    assert inversion_error < 0.25 * bf16_error
    assert max(relative_errors(grads_inv, grads_ref)) < 0.1


def global_error(actual, expected):
    """Norm of the difference of all gradients over the norm of all the expected ones."""
    actual, expected = torch.cat([a.flatten() for a in actual]), torch.cat([b.flatten() for b in expected])
    return ((actual - expected).norm() / expected.norm()).item()


class AdditiveCoupling(InvertibleModule):
    """A toy coupling whose subnet follows the ambient autocast (IRN's dense blocks choose their own)."""

    def __init__(self, dims_in, dims_c=None, update_first=True):
        super().__init__(dims_in, dims_c)
        half = dims_in[0][0] // 2
        self.update_first = update_first
        self.net = nn.Conv2d(half, half, 3, padding=1)

    def forward(self, x, c=None, rev=False, jac=True):
        a, b = x[0].chunk(2, 1)
        if not self.update_first:
            a, b = b, a
        shift = self.net(b).float()
        a = a - shift if rev else a + shift
        return (torch.cat((a, b) if self.update_first else (b, a), 1),), 0.0

    def output_dims(self, input_dims):
        return input_dims


def test_recomputation_reruns_the_forward_under_its_autocast_state():
    """Called under an outer bf16 autocast and back-propagated outside it, as a training step does: the
    backward reruns the modules under the forward's autocast state, not the backward's."""
    torch.manual_seed(0)
    modules = nn.ModuleList(AdditiveCoupling([(8, 6, 6)], update_first=k % 2 == 0) for k in range(4))
    x = torch.randn(2, 8, 6, 6)
    grads = []
    for inverted in (False, True):
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run_inverting(modules, leaf) if inverted else plain(modules, leaf)
        grads.append(torch.autograd.grad(out.square().sum(), [leaf, *modules.parameters()]))
    assert max(relative_errors(grads[1], grads[0])) < 1e-3


def plain(modules, x):
    for module in modules:
        x = module((x,), jac=False)[0][0]
    return x


def test_reconstruction_errors_of_the_recomputed_inputs():
    reference, _ = pair(4, 2, torch.float64, std=0.02)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    errors = reconstruction_errors(reference.net, x)
    assert len(errors) == len(reference.net.module_list) and max(errors) < 1e-13
    errors = reconstruction_errors(reference.float().net, x.float())
    assert 0 < max(errors) < 1e-5
    assert errors[0] >= errors[-1]  # the error accumulates from the output towards the first module
    y = torch.randn(2, 48, 4, 4)
    assert 0 < max(reconstruction_errors(reference.net, y, rev=True)) < 1e-4


def test_double_backward_is_refused():
    _, inverting = pair(2, 1)
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(inverting(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|differentiate"):
        grad.sum().backward()


def test_an_inverse_that_writes_into_its_input_is_refused():
    """FrEIA's HaarDownsampling without its band permutation scales its inverse's input in place: inverting
    the saved output with it would corrupt the saved tensor."""
    modules = [HaarDownsampling([(3, 4, 4)], order_by_wavelet=False)]
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    out = run_inverting(modules, x)
    with pytest.raises(RuntimeError, match="wrote into its input"):
        out.sum().backward()


def test_torch_compile_runs_the_sequence_eagerly_behind_one_graph_break_per_pass():
    """Dynamo cannot trace the node (its backward reruns modules and calls torch.autograd.grad):
    run_inverting is a deliberate graph break, the sequence runs eagerly and the gradients stay right."""
    from torch._dynamo.utils import counters

    reference, inverting = pair(2, 1, torch.float32)
    x = torch.rand(2, 3, 4, 4)

    def loss(model, x):
        return model(x).square().sum()

    expected = torch.autograd.grad(loss(reference, x), trainable(reference))
    torch._dynamo.reset()
    counters.clear()
    try:
        actual = torch.autograd.grad(torch.compile(loss, backend="aot_eager")(inverting, x), trainable(inverting))
        breaks = dict(counters["graph_break"])
    finally:
        torch._dynamo.reset()
    assert breaks and all("disable" in reason for reason in breaks), breaks
    assert max(relative_errors(actual, expected)) < 1e-4
