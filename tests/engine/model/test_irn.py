import copy
import math

import pytest
import torch
from FrEIA.framework import SequenceINN

import engine
from engine.model.irn import Haar, IRNCoupling, LearnedDownsampling, quantize
from tests.official_irn import OfficialConvDownsampling, OfficialHaar, OfficialIRN, randomize

PARAMS = {2: 1_667_952, 3: 3_139_029, 4: 4_355_136, 8: 11_119_248}  # x3: counted on the official code


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_trainable_parameter_counts_match_the_paper(scale):
    model = engine.build(scale)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == PARAMS[scale]


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_inverse_of_forward_is_identity(scale):
    torch.manual_seed(0)
    model = randomize(engine.build(scale, blocks_per_stage=2)).double()
    x = torch.rand(2, 3, 2 * scale, 3 * scale, dtype=torch.float64)
    y = model(x)
    assert (model(y, rev=True) - x).abs().max() < 1e-5
    assert y.shape == (2, 3 * scale**2, 2, 3)


def test_fresh_model_is_identity_per_block():
    model = engine.build(2)
    x = torch.rand(1, 3, 8, 8)
    haar_only = Haar([(3, 8, 8)])
    assert torch.equal(model(x), haar_only([x])[0][0])


def test_haar_equals_reference_formulas_and_band_order():
    x = torch.rand(2, 3, 6, 10)
    out = Haar([(3, 6, 10)])([x])[0][0]
    a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    bands = [(a + b + c + d) / 4, (a - b + c - d) / 4, (a + b - c - d) / 4, (a - b - c + d) / 4]
    expected = torch.cat(bands, 1)  # band-major: every channel's low band first
    assert torch.allclose(out, expected, atol=1e-7)
    assert torch.allclose(out, OfficialHaar(3)(x), atol=1e-7)
    back = Haar([(3, 6, 10)])([out], rev=True)[0][0]
    assert torch.allclose(back, x, atol=1e-6)


def test_haar_log_det_matches_the_official_value():
    x = torch.rand(2, 3, 4, 4)
    _, log_det = Haar([(3, 4, 4)])([x])
    assert log_det == pytest.approx(x[0].numel() / 4 * torch.log(torch.tensor(1 / 16)).item())


def test_coupling_block_equals_the_equations_both_ways():
    block = randomize(IRNCoupling([(12, 4, 4)]), std=0.1)
    x = torch.randn(2, 12, 4, 4)
    x1, x2 = x[:, :3], x[:, 3:]
    y1 = x1 + block.F(x2)
    s = 2 * torch.sigmoid(block.H(y1)) - 1
    y2 = x2 * torch.exp(s) + block.G(y1)
    (y,), log_det = block([x])
    assert torch.allclose(y, torch.cat((y1, y2), 1), atol=1e-6)
    assert torch.allclose(log_det, s.flatten(1).sum(1), atol=1e-5)
    s_inv = 2 * torch.sigmoid(block.H(y1)) - 1
    x2_back = (y2 - block.G(y1)) * torch.exp(-s_inv)
    (x_back,), _ = block([y], rev=True)
    assert torch.allclose(x_back, torch.cat((y1 - block.F(x2_back), x2_back), 1), atol=1e-6)
    assert torch.allclose(x_back, x, atol=1e-5)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_graph_equals_an_independent_official_layout_network(scale):
    official = randomize(OfficialIRN(scale, blocks=2), seed=scale).double()
    model = engine.model.rescaler.from_state_dict(official.state_dict()).double()
    x = torch.rand(2, 3, 4 * scale, 2 * scale, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(model(x), official(x), rtol=0, atol=1e-10)
        y = torch.randn(2, 3 * scale**2, 4, 2, dtype=torch.float64)
        assert torch.allclose(model(y, rev=True), official(y, rev=True), rtol=0, atol=1e-10)


def test_graph_is_a_freia_sequence_inn_in_the_official_operation_order():
    net = engine.build(4).net
    assert isinstance(net, SequenceINN)
    kinds = [type(m).__name__ for m in net.module_list]
    assert kinds == ["Haar"] + ["IRNCoupling"] * 8 + ["Haar"] + ["IRNCoupling"] * 8  # official operations 0..17
    x = torch.rand(1, 3, 8, 8)
    chained = x
    for module in net.module_list:  # the graph is exactly its modules applied in order
        chained = module([chained], jac=False)[0][0]
    assert torch.equal(net(x, jac=False)[0], chained)


def test_x3_is_one_learnable_downsampling_then_12_blocks_on_27_channels():
    model = engine.build(3)
    kinds = [type(m).__name__ for m in model.net.module_list]
    assert kinds == ["LearnedDownsampling"] + ["IRNCoupling"] * 12  # official operations 0..12
    assert model.arch == dict(scale=3, blocks_per_stage=12, growth=32, clamp=1.0)
    blocks = model.net.module_list[1:]
    assert all(
        b.F.conv1.in_channels == 24 and b.F.conv5.out_channels == 3 and b.G.conv1.in_channels == 3 for b in blocks
    )
    assert all(b.G.conv5.out_channels == b.H.conv5.out_channels == 24 for b in blocks)
    assert [k for k in model.state_dict() if "module_list.0." in k] == ["net.module_list.0.conv_weights"]
    assert model.z_channels() == 24


def test_learned_downsampling_starts_as_the_identity_with_an_averaging_first_row():
    module = LearnedDownsampling([(3, 6, 9)])
    expected = torch.eye(9)
    expected[0] = 1 / 9
    assert torch.equal(module.conv_weights.detach(), expected) and module.conv_weights.requires_grad
    x = torch.rand(2, 3, 6, 9)
    (out,), log_det = module([x])
    assert torch.allclose(out[:, :3], torch.nn.functional.avg_pool2d(x, 3), atol=1e-6)  # band 0: each block's mean
    for k in range(1, 9):  # band k, channel c: pixel (k // 3, k % 3) of each block of channel c
        assert torch.equal(out[:, 3 * k : 3 * k + 3], x[..., k // 3 :: 3, k % 3 :: 3])
    assert torch.allclose(log_det, torch.full((2,), 3 * 6 * 9 / 9 * math.log(1 / 9)), atol=1e-5)
    assert torch.equal(
        LearnedDownsampling([(3, 6, 9)], scale=2).conv_weights, OfficialHaar(1).haar_weights.reshape(4, 4) / 4
    )


def random_downsampling(seed=0):
    module = randomize(LearnedDownsampling([(3, 6, 9)]), std=0.2, seed=seed).double()
    official = OfficialConvDownsampling(3).double()
    official.load_state_dict(module.state_dict())
    return module, official


def test_learned_downsampling_equals_the_official_layout_and_formula_both_ways():
    module, official = random_downsampling()
    w = module.conv_weights.detach()
    x = torch.rand(2, 3, 6, 9, dtype=torch.float64)
    (out,), _ = module([x])
    blocks = x.reshape(2, 3, 2, 3, 3, 3).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 2, 3, 9)  # (b, c, y, x, 3i+j)
    formula = torch.einsum("km,bcyxm->bkcyx", w, blocks).reshape(2, 27, 2, 3)  # channel k * C + c
    assert torch.allclose(out, formula, rtol=0, atol=1e-12)
    assert torch.allclose(out, official(x), rtol=0, atol=1e-12)
    y = torch.randn(2, 27, 2, 3, dtype=torch.float64)
    (back,), _ = module([y], rev=True)
    assert torch.allclose(back, official(y, rev=True), rtol=0, atol=1e-10)
    assert torch.allclose(module([back])[0][0], y, rtol=0, atol=1e-12)


def test_learned_downsampling_log_det_is_that_of_its_full_jacobian():
    module, _ = random_downsampling(seed=1)
    x = torch.rand(1, 3, 3, 6, dtype=torch.float64)
    full = torch.autograd.functional.jacobian(lambda t: module([t], jac=False)[0][0], x).reshape(x.numel(), -1)
    (y,), log_det = module([x])
    assert log_det.item() == pytest.approx(torch.linalg.slogdet(full).logabsdet.item(), abs=1e-9)
    assert module([y], rev=True)[1].item() == pytest.approx(-log_det.item(), abs=1e-12)
    # 3 channels x 2 blocks, each mixed by W
    assert log_det.item() == pytest.approx(6 * torch.linalg.slogdet(module.conv_weights).logabsdet.item(), abs=1e-12)


def test_learned_downsampling_gradients_both_ways():
    module, _ = random_downsampling(seed=2)
    x = torch.rand(1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 27, 1, 1, dtype=torch.float64, requires_grad=True)
    weights = module.conv_weights
    assert torch.autograd.gradcheck(lambda t, w: module([t])[0][0] * w.sum(), (x, weights))
    assert torch.autograd.gradcheck(lambda t, w: module([t], rev=True)[0][0] * w.sum(), (y, weights))


def test_quantizer_rounds_to_8_bit_with_identity_gradient():
    x = torch.tensor([-0.3, 0.0, 0.5, 0.50196, 1.4], requires_grad=True)
    q = quantize(x)
    assert torch.equal(q, torch.round(x.detach().clamp(0, 1) * 255) / 255)
    q.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_no_module_holds_a_tensor_outside_its_parameters_and_buffers(scale):
    """A plain tensor attribute stays on the CPU when the model moves: each use would be a copy and a sync."""
    for name, module in engine.build(scale, blocks_per_stage=1).named_modules():
        stray = [key for key, value in vars(module).items() if torch.is_tensor(value)]
        assert not stray, f"{name or 'model'} holds {stray} outside its parameters and buffers"
    first = engine.build(scale, blocks_per_stage=1).net.module_list[0]
    if scale == 3:
        assert dict(first.named_parameters()).keys() == {"conv_weights"} and not list(first.buffers())
    else:
        assert {"perm", "perm_inv"} <= dict(first.named_buffers()).keys() and "perm" not in first.state_dict()


def test_mixed_precision_runs_the_subnets_low_and_keeps_the_invertible_stream_fp32():
    from engine.model.execution import set_subnet_precision

    torch.manual_seed(0)
    reference = randomize(engine.build(4, blocks_per_stage=2), std=0.02)
    low = set_subnet_precision(copy.deepcopy(reference), "bf16")
    hr = torch.rand(2, 3, 16, 24)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # an outer autocast changes nothing
        lr, z = low.downscale(hr)
        subnet_out = low.net.module_list[1].F(torch.rand(2, 9, 8, 12))
    assert lr.dtype == z.dtype == subnet_out.dtype == torch.float32
    assert torch.equal(lr * 255, torch.round(lr * 255))  # exactly on the 8-bit grid
    with torch.no_grad():
        lr_fp32, z_fp32 = reference.downscale(hr, quantize=False)
        lr_bf16, _ = low.downscale(hr, quantize=False)
    assert (lr_bf16 - lr_fp32).abs().max() < 0.05 and not torch.equal(lr_bf16, lr_fp32)  # bf16 convs, close


def test_learned_downsampling_stays_fp32_under_an_outer_autocast():
    from engine.model.execution import set_subnet_precision

    module = randomize(LearnedDownsampling([(3, 6, 9)]), std=0.2)
    x = torch.rand(2, 3, 6, 9)
    with torch.no_grad():
        (reference,), _ = module([x])
        (reference_back,), _ = module([reference], rev=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            (out,), _ = module([x])
            (back,), _ = module([out], rev=True)
    assert out.dtype == back.dtype == torch.float32
    assert torch.equal(out, reference) and torch.equal(back, reference_back)
    # the whole x3 network under autocast, with fp32 subnets: exactly the fp32 result
    model = set_subnet_precision(randomize(engine.build(3, blocks_per_stage=1, growth=8), std=0.02), "fp32")
    hr = torch.rand(1, 3, 12, 9)
    with torch.no_grad():
        lr, z = model.downscale(hr, quantize=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lr_auto, z_auto = model.downscale(hr, quantize=False)
            up = model.upscale(lr_auto, z_auto)
    assert lr_auto.dtype == up.dtype == torch.float32
    assert torch.equal(lr_auto, lr) and torch.equal(z_auto, z) and torch.allclose(up, hr, atol=1e-5)
