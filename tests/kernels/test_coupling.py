import pytest
import torch

import kernels.coupling as coupling_kernels
from engine.model.irn import coupling_scale
from kernels.coupling import (
    coupling,
    coupling_forward,
    coupling_forward_backward,
    coupling_inverse,
    coupling_inverse_backward,
)
from tests.kernels.conftest import CUDA, DEVICE, DTYPES, assert_close

# (batch, block channels, H, W); the kernel sees the block's x2 part: channels - 3
SHAPES = [(1, 12, 2, 2), (2, 48, 6, 10), (3, 12, 18, 34), (1, 12, 72, 72)]
if CUDA:
    SHAPES = [(b, c, h, w) for b in (1, 2, 3) for c in (12, 48, 192) for h, w in ((2, 2), (6, 10), (18, 34), (72, 72))]


def reference(x2, h, g, clamp, rev):
    s = coupling_scale(h, clamp)
    return (x2 - g) * torch.exp(-s) if rev else x2 * torch.exp(s) + g


def inputs(shape, dtype):
    b, c, h, w = shape
    full = torch.randn(b, c, h, w, device=DEVICE).to(dtype)
    return (
        full,
        torch.randn(b, c - 3, h, w, device=DEVICE).to(dtype),
        torch.randn(b, c - 3, h, w, device=DEVICE).to(dtype),
    )


@pytest.mark.parametrize("rev", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_outputs_and_gradients_match_the_reference(shape, dtype, rev):
    full, h, g = inputs(shape, dtype)
    fast = [full.clone().requires_grad_(), h.clone().requires_grad_(), g.clone().requires_grad_()]
    ref = [t.float().clone().requires_grad_() for t in (full, h, g)]
    out = coupling(fast[0][:, 3:], fast[1], fast[2], 1.0, rev)  # x2 read in place from the block's input
    expected = reference(ref[0][:, 3:], ref[1], ref[2], 1.0, rev)
    assert out.dtype == dtype
    assert_close(out, expected, dtype)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    out.backward(grad.to(dtype))
    for a, b in zip(fast, ref, strict=True):
        assert_close(a.grad, b.grad, dtype)


@pytest.mark.parametrize("clamp", [1.0, 0.5])
def test_inverse_undoes_forward(clamp):
    _, h, g = inputs((2, 48, 6, 10), torch.float32)
    x2 = torch.randn_like(h)
    torch.testing.assert_close(coupling(coupling(x2, h, g, clamp), h, g, clamp, rev=True), x2, rtol=1e-5, atol=1e-5)


def test_layouts_channels_last_and_mixed():
    _, h, g = inputs((2, 12, 6, 10), torch.float32)
    x2 = torch.randn_like(h)
    expected = reference(x2, h, g, 1.0, False)
    cl = [t.to(memory_format=torch.channels_last) for t in (x2, h, g)]
    out = coupling(*cl, 1.0)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(coupling(cl[0], h, g, 1.0), expected, rtol=1e-5, atol=1e-5)


def layouts(shape):
    """A tensor of `shape` in each layout the ops meet: contiguous, channels_last, a channel slice."""
    b, c, h, w = shape
    return {
        "contiguous": torch.randn(shape, device=DEVICE),
        "channels_last": torch.randn(shape, device=DEVICE).to(memory_format=torch.channels_last),
        "slice": torch.randn(b, c + 3, h, w, device=DEVICE)[:, 3:],
    }


LAYOUT_MIXES = [("contiguous",) * 3, ("channels_last",) * 3, ("slice",) * 3, ("contiguous", "channels_last", "slice")]


@pytest.mark.parametrize("mix", LAYOUT_MIXES, ids="-".join)
@pytest.mark.parametrize(
    "op", [coupling_forward, coupling_inverse, coupling_forward_backward, coupling_inverse_backward]
)
def test_custom_ops_and_their_fakes_agree_on_every_layout(op, mix):
    """opcheck: the fake implementation gives the real op's shapes, dtypes and strides; autograd works."""
    args = [layouts((2, 9, 4, 6))[kind].requires_grad_(op in (coupling_forward, coupling_inverse)) for kind in mix]
    torch.library.opcheck(op, (*args, 1.0))


@pytest.mark.parametrize(
    "shape, message",
    [
        ((65536, 1, 1, 1), "at most 65535 samples a call, got 65536"),  # the samples are a grid's second axis
        ((1, 2**11, 2**10, 2**10), r"index a sample in int32: \(1, 2048, 1024, 1024\)"),
    ],
)
def test_what_the_grid_and_int32_indexing_cannot_reach_is_refused_before_any_launch(shape, message):
    """On meta tensors: nothing is allocated, and the launcher refuses before the kernel would run."""
    x, h, g = (torch.empty(shape, device="meta") for _ in range(3))
    with pytest.raises(ValueError, match=message):
        coupling_kernels._affine(x, h, g, 1.0, inverse=False)
