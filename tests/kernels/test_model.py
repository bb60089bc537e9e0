"""The whole network: fast path (Triton ops) and compiled path against the FrEIA reference graph."""

import copy

import pytest
import torch

import engine
from engine.model.execution import (
    compile_model,
    dense_kernels_unavailable,
    fast_kernels_unavailable,
    pair_subnets,
    set_subnet_precision,
    use_fast_kernels,
)
from engine.model.losses import irn_losses, network_passes
from profiling.runtime.probe import set_fp32_precision
from tests.kernels.conftest import CUDA, DEVICE, program_order
from tests.official_irn import randomize

CFG = {"lambda_fit": 16.0, "lambda_ce": 1.0, "lambda_rec": 1.0}


def loss_and_grads(model, hr, noise):
    model.zero_grad()
    y, z, back = network_passes(model, hr, noise)
    loss = sum(irn_losses(y, z, back, hr, torch.nn.functional.avg_pool2d(hr, model.scale), **CFG).values())
    loss.backward()
    return (y, z, back), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def assert_grads_close(actual, expected, tol):
    """Each gradient to `tol` of its largest entry: fp32 sums run in another order, and the Charbonnier
    loss turns 1e-6 output differences near zero error into much larger relative gradient differences."""
    for a, b in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=tol * b.abs().max().item())


def pair(scale, blocks=1):
    reference = randomize(engine.build(scale, blocks_per_stage=blocks, growth=8), std=0.05, seed=scale).to(DEVICE)
    return reference, use_fast_kernels(copy.deepcopy(reference))


def inputs(scale):
    g = torch.Generator().manual_seed(1)
    hr = torch.rand(2, 3, 4 * scale, 6 * scale, generator=g).to(DEVICE)
    noise = torch.randn(2, 3 * scale**2 - 3, 4, 6, generator=g).to(DEVICE)
    return hr, noise


@pytest.mark.parametrize("scale", [2, 3, 4])  # x3: its learnable downsampling stays the reference op
def test_fast_path_equals_the_freia_graph_both_ways_with_gradients(scale):
    reference, fast = pair(scale)
    hr, noise = inputs(scale)
    (outs_ref, grads_ref), (outs_fast, grads_fast) = (
        loss_and_grads(reference, hr, noise),
        loss_and_grads(fast, hr, noise),
    )
    for a, b in zip(outs_fast, outs_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert_grads_close(grads_fast, grads_ref, 1e-4)


def test_a_fused_coupling_runs_its_h_and_g_in_one_call_both_ways():
    """The fused dense-block op is called twice a coupling and pass, for F and for H and G together, downscaling
    and upscaling alike; three times with H and G one after the other (pair_subnets off), to the same outputs,
    bit for bit, with the dense blocks in bf16, and the same gradients but for fp32's rounding (autograd adds y1's
    three gradients in another order: (dH + dG) + the rest). tests/kernels/test_dense.py covers fp32."""
    _, fast = pair(2)  # one coupling
    set_subnet_precision(fast, "bf16")  # x's copies made in the pass that casts it, one per block
    hr, noise = inputs(2)

    def dense_calls():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as ops:
            results = loss_and_grads(fast, hr, noise)
        return sum(event.name == "irn::dense_block" for event in ops.events()), results

    together, (outs, grads) = dense_calls()
    pair_subnets(fast, enabled=False)
    apart, (outs_apart, grads_apart) = dense_calls()
    assert (together, apart) == (2 * 2, 2 * 3)  # two passes
    for a, b in zip(outs, outs_apart, strict=True):
        assert torch.equal(a, b)
    assert_grads_close(grads, grads_apart, 1e-6)


@pytest.mark.skipif(CUDA, reason="the interpreter's allocations and program order")
@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_fast_path_reads_no_unwritten_memory_and_needs_no_program_order(nan_allocations, order):
    """With every allocation NaN-filled, as a GPU's recycled memory may be, and each launch's programs run
    in another order, the fused model's outputs and gradients are, bit for bit, those of an ordinary run:
    no kernel reads an element that nothing wrote, and no program waits on another of its launch."""
    _, fast = pair(2)
    hr, noise = inputs(2)
    (outs, grads) = loss_and_grads(fast, hr, noise)  # NaN allocations, grid order
    with program_order(order):
        outs_shuffled, grads_shuffled = loss_and_grads(fast, hr, noise)
    assert all(torch.isfinite(t).all() for t in outs + tuple(grads))
    for a, b in zip(outs_shuffled + tuple(grads_shuffled), outs + tuple(grads), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.skipif(CUDA, reason="TF32 as the interpreter emulates it")
def test_fast_path_in_tf32_is_within_tf32_rounding_of_fp32(fp32_precision_restored):
    """The fused dense blocks' TF32 dots (the recipe's default: --tf32 true), emulated in the interpreter
    as tensor cores compute them (inputs' low 13 mantissa bits dropped), against the exact fp32 reference:
    off by TF32's rounding (2**-10 of each input), far above fp32's, and no more."""
    reference, fast = pair(2)
    hr, noise = inputs(2)
    outs_ref, grads_ref = loss_and_grads(reference, hr, noise)
    set_fp32_precision(torch.backends.cudnn.conv, "tf32")  # the CPU reference's convolutions stay exact
    outs, grads = loss_and_grads(fast, hr, noise)
    errors = largest_error(outs, outs_ref) + largest_error(grads, grads_ref)
    assert 1e-5 < max(errors) < 1e-2, errors


def largest_error(actual, expected):
    """Per tensor, the largest difference relative to the largest entry of the fp32 result."""
    return [((a - b).abs().max() / b.abs().max()).item() for a, b in zip(actual, expected, strict=True)]


def test_fast_path_in_bf16_is_as_close_to_fp32_as_the_reference_in_bf16():
    """Both paths run the dense blocks in bf16 and the invertible stream in fp32: the same dtypes, and the
    fused path's bf16 results no further from the fp32 ones than the reference's (the CPU's bf16
    convolutions accumulate in bf16 where the kernels accumulate in fp32)."""
    exact, _ = pair(2)
    reference, fast = (set_subnet_precision(model, "bf16") for model in pair(2))
    hr, noise = inputs(2)
    outs_fp32, grads_fp32 = loss_and_grads(exact, hr, noise)
    errors = []
    for outs, grads in (loss_and_grads(reference, hr, noise), loss_and_grads(fast, hr, noise)):
        assert all(o.dtype == torch.float32 for o in outs)
        assert max(largest_error(outs, outs_fp32)) < 2e-2
        errors.append(largest_error(grads, grads_fp32))
    reference_errors, fast_errors = errors
    assert sum(fast_errors) <= 1.5 * sum(reference_errors), (fast_errors, reference_errors)


def test_one_set_of_weights_serves_both_paths():
    reference, fast = pair(2, blocks=1)
    assert list(fast.state_dict()) == list(reference.state_dict())
    back = use_fast_kernels(copy.deepcopy(fast), enabled=False)
    hr, _ = inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(back(hr), reference(hr), rtol=0, atol=0)


def test_fast_kernels_say_why_they_cannot_run_on_a_cpu():
    assert "need a CUDA GPU" in fast_kernels_unavailable("cpu")


@pytest.mark.parametrize("capability, cudnn", [((6, 0), True), ((7, 5), True), ((8, 0), False), ((9, 0), False)])
def test_dense_blocks_stay_on_cudnn_before_compute_capability_8(monkeypatch, capability, cudnn):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    note = dense_kernels_unavailable("cuda")
    assert (note is not None) == cudnn
    assert not cudnn or f"compute capability {capability[0]}.{capability[1]}" in note


@pytest.mark.parametrize(
    "fast, backend, scale",
    # Inductor's CPU compile of both directions and their backward takes about a minute: it runs once,
    # on the reference ops at x4 (two Haar stages); the fused ops, which run in Triton's interpreter on
    # a CPU, are traced with aot_eager at x2, which checks their fake kernels and autograd registrations
    # with no graph break at a fraction of the time. A GPU compiles both with inductor at x4.
    [(False, "inductor", 4), (True, "aot_eager", 2)]
    if not torch.cuda.is_available()
    else [(False, "inductor", 4), (True, "inductor", 4)],
    ids=["compile", "fast+compile"],
)
def test_compiled_model_gives_the_eager_results(fast, backend, scale):
    """torch.compile against eager: outputs to 1e-4 relative, gradients to 1e-4 of their largest entry.
    Two steps: the second runs the cached graphs."""
    reference, fast_model = pair(scale)
    eager = fast_model if fast else reference
    compiled = compile_model(
        copy.deepcopy(eager), "default", DEVICE, fullgraph=True, backend=backend
    )  # a graph break fails
    hr, noise = inputs(scale)
    loss_and_grads(compiled, hr, noise)
    (outs_e, grads_e), (outs_c, grads_c) = loss_and_grads(eager, hr, noise), loss_and_grads(compiled, hr, noise)
    for a, b in zip(outs_c, outs_e, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert_grads_close(grads_c, grads_e, 1e-4)


def test_the_crm_s_residual_dense_blocks_run_fused_with_the_reference_s_results_and_gradients():
    from engine.model import crm

    reference = randomize(crm.build(features=16, blocks=1, growth=8), std=0.05, seed=7).to(DEVICE)
    fast = use_fast_kernels(copy.deepcopy(reference))
    assert all(block.fast_op is not None for block in fast.modules() if isinstance(block, crm.ResidualDenseBlock))
    x = torch.rand(1, 3, 4, 5, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    results = []
    for model in (reference, fast):
        model.zero_grad()
        out = model(x)
        out.pow(2).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (out_ref, grads_ref), (out_fast, grads_fast) = results
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-5)
    assert_grads_close(grads_fast, grads_ref, 1e-4)
