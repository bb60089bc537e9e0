import pytest
import torch

import kernels.haar as haar_kernels
from engine.model.irn import Haar
from kernels.haar import haar, haar_forward, haar_inverse
from tests.kernels.conftest import CUDA, DEVICE, DTYPES, assert_close

# (batch, channels, H, W): the interpreter on a CPU is slow, so CPU runs a spread, CUDA the full grid.
SHAPES = [(1, 12, 2, 2), (2, 48, 6, 10), (3, 12, 18, 34), (1, 12, 72, 72)]
if CUDA:
    SHAPES = [(b, c, h, w) for b in (1, 2, 3) for c in (12, 48, 192) for h, w in ((2, 2), (6, 10), (18, 34), (72, 72))]


def reference(x, rev=False):
    return Haar([tuple(x.shape[1:]) if not rev else (x.shape[1] // 4, 2 * x.shape[2], 2 * x.shape[3])])([x], rev=rev)[
        0
    ][0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradient_match_freia(shape, dtype):
    x = torch.randn(shape, device=DEVICE).to(dtype)
    x_ref, x_fast = x.float().clone().requires_grad_(), x.clone().requires_grad_()
    ref, out = reference(x_ref), haar(x_fast)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out, ref, dtype)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.backward(grad.to(dtype))
    assert_close(x_fast.grad, x_ref.grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES[:3])
def test_inverse_and_gradient_match_freia_and_undo_forward(shape, dtype):
    b, c, h, w = shape
    y = torch.randn(b, 4 * c, h // 2 or 1, w // 2 or 1, device=DEVICE).to(dtype)
    y_ref, y_fast = y.float().clone().requires_grad_(), y.clone().requires_grad_()
    ref, out = reference(y_ref, rev=True), haar(y_fast, rev=True)
    assert_close(out, ref, dtype)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.backward(grad.to(dtype))
    assert_close(y_fast.grad, y_ref.grad, dtype)
    x = torch.randn(shape, device=DEVICE)
    torch.testing.assert_close(haar(haar(x), rev=True), x, rtol=1e-5, atol=1e-6)


def test_channels_last_in_channels_last_out():
    x = torch.randn(2, 12, 6, 10, device=DEVICE).to(memory_format=torch.channels_last)
    out = haar(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference(x.contiguous()), rtol=1e-5, atol=1e-6)
    back = haar(out, rev=True)
    assert back.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-6)


def test_odd_sizes_are_refused():
    with pytest.raises(ValueError, match="even H and W"):
        haar(torch.randn(1, 3, 5, 4, device=DEVICE))


def test_what_int32_offsets_and_the_grid_cannot_index_is_refused_before_launch():
    """Offsets within a sample are int32 and a channel's pixel blocks lie along the grid's second axis
    (at most 65535): beyond either, one clear error, not a wrong result. Meta tensors: nothing runs."""
    wide = torch.empty_strided((1, 2, 2, 2), (1, 2**31, 2, 1), device="meta")  # channel 1 at 2**31
    with pytest.raises(ValueError, match="int32"):
        haar_kernels._launch(wide, torch.empty(1, 8, 1, 1, device="meta"), 0.5, inverse=False)
    long = torch.empty(1, 1, 2, 2 * haar_kernels.BLOCK * haar_kernels.MAX_BLOCKS + 2, device="meta")
    bands = torch.empty(1, 4, 1, long.shape[3] // 2, device="meta")
    with pytest.raises(ValueError, match="pixels per channel"):
        haar_kernels._launch(long, bands, 0.5, inverse=False)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "slice"])
@pytest.mark.parametrize("op, shape", [(haar_forward, (2, 3, 4, 6)), (haar_inverse, (2, 12, 2, 3))])
def test_custom_ops_and_their_fakes_agree_on_every_layout(op, shape, layout):
    """opcheck: the fake implementation gives the real op's shapes, dtypes and strides; autograd works."""
    b, c, h, w = shape
    x = {
        "contiguous": torch.randn(shape, device=DEVICE),
        "channels_last": torch.randn(shape, device=DEVICE).to(memory_format=torch.channels_last),
        "slice": torch.randn(b, c + 3, h, w, device=DEVICE)[:, 3:],
    }[layout]
    torch.library.opcheck(op, (x.requires_grad_(), 0.25))
