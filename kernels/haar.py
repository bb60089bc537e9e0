"""The Haar transform of IRN in Triton: forward (downsampling) and inverse, each the other's backward.

For each input channel c and 2x2 patch (a b / c d), forward writes four bands in band-major order
(output channel k * C + c for band k): (a+b+c+d), (a-b+c-d), (a+b-c-d), (a-b-c+d), times `scale`
(1/4 in IRN). Call it M x * scale. The inverse applies M^T (exact, since M^T M = 4 I):
    forward(x, s) = s M x    -> grad_x = s M^T grad = inverse(grad, s)
    inverse(y, s) = s M^T y  -> grad_y = s M grad   = forward(grad, s)
Indexing goes through strides, so contiguous and channels_last tensors work without copies.
"""

import math

import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

BLOCK = 1024
MAX_BLOCKS = 65535  # programs along a grid's second axis (CUDA's limit): pixel blocks of one channel


@triton.jit
def _haar_kernel(
    src,
    dst,
    C,
    Wo,
    P,  # low-resolution pixels per channel: Ho * Wo
    s_b,
    s_c,
    s_h,
    s_w,  # strides of the full-resolution tensor
    d_b,
    d_c,
    d_h,
    d_w,  # strides of the band tensor
    scale,
    INVERSE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Program (row, block): one (batch, channel) row, and a block of its low-resolution pixels, one per lane.
    # The row's offsets are int64 (a tensor can pass 2**31 elements); those inside a row are int32 (_launch
    # checks that one sample spans fewer), so each lane does one 32-bit division, not 64-bit ones.
    row = tl.program_id(0)
    b = row // C
    c = row - b * C
    q = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = q < P
    i = q // Wo
    j = q - i * Wo
    image = b.to(tl.int64) * s_b + c.to(tl.int64) * s_c
    bands = b.to(tl.int64) * d_b + c.to(tl.int64) * d_c  # band 0 of channel c
    hi = 2 * i * s_h + 2 * j * s_w  # top-left pixel of the 2x2 patch, in the row
    lo = i * d_h + j * d_w
    band = C * d_c
    if INVERSE:
        src_row, dst_row = src + bands, dst + image
        p0 = tl.load(src_row + lo, mask=mask).to(tl.float32)
        p1 = tl.load(src_row + lo + band, mask=mask).to(tl.float32)
        p2 = tl.load(src_row + lo + 2 * band, mask=mask).to(tl.float32)
        p3 = tl.load(src_row + lo + 3 * band, mask=mask).to(tl.float32)
        out = dst.dtype.element_ty
        tl.store(dst_row + hi, ((p0 + p1 + p2 + p3) * scale).to(out), mask=mask)
        tl.store(dst_row + hi + s_w, ((p0 - p1 + p2 - p3) * scale).to(out), mask=mask)
        tl.store(dst_row + hi + s_h, ((p0 + p1 - p2 - p3) * scale).to(out), mask=mask)
        tl.store(dst_row + hi + s_h + s_w, ((p0 - p1 - p2 + p3) * scale).to(out), mask=mask)
    else:
        src_row, dst_row = src + image, dst + bands
        a = tl.load(src_row + hi, mask=mask).to(tl.float32)
        b_ = tl.load(src_row + hi + s_w, mask=mask).to(tl.float32)
        c_ = tl.load(src_row + hi + s_h, mask=mask).to(tl.float32)
        d = tl.load(src_row + hi + s_h + s_w, mask=mask).to(tl.float32)
        out = dst.dtype.element_ty
        tl.store(dst_row + lo, ((a + b_ + c_ + d) * scale).to(out), mask=mask)
        tl.store(dst_row + lo + band, ((a - b_ + c_ - d) * scale).to(out), mask=mask)
        tl.store(dst_row + lo + 2 * band, ((a + b_ - c_ - d) * scale).to(out), mask=mask)
        tl.store(dst_row + lo + 3 * band, ((a - b_ - c_ + d) * scale).to(out), mask=mask)


def _memory_format(x):
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def _bands_like(x):
    b, c, h, w = x.shape
    return torch.empty(b, 4 * c, h // 2, w // 2, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))


def _image_like(y):
    b, c4, h, w = y.shape
    return torch.empty(b, c4 // 4, 2 * h, 2 * w, dtype=y.dtype, device=y.device, memory_format=_memory_format(y))


def _sample_span(t):
    """One past the largest offset, in elements, of one sample of t from its first element."""
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape[1:], t.stride()[1:], strict=True))


def _launch(image, bands, scale, inverse):
    b, c, h, w = image.shape
    pixels = (h // 2) * (w // 2)
    if image.numel() == 0:
        return
    if max(_sample_span(image), _sample_span(bands)) >= 2**31:
        raise ValueError(f"the Haar kernel indexes within a sample in int32: {tuple(image.shape)} spans 2**31 elements")
    blocks = triton.cdiv(pixels, BLOCK)
    if blocks > MAX_BLOCKS:
        raise ValueError(f"the Haar kernel takes at most {MAX_BLOCKS * BLOCK} pixels per channel, got {h}x{w}")
    src, dst = (bands, image) if inverse else (image, bands)
    _haar_kernel[(b * c, blocks)](
        src, dst, c, w // 2, pixels, *image.stride(), *bands.stride(), scale, INVERSE=inverse, BLOCK=BLOCK
    )


def _check(x, what):
    if x.dim() != 4:
        raise ValueError(f"{what} must be (B, C, H, W), got shape {tuple(x.shape)}")


@torch.library.custom_op("irn::haar_forward", mutates_args=())
def haar_forward(x: torch.Tensor, scale: float) -> torch.Tensor:
    _check(x, "haar_forward input")
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"the Haar transform needs even H and W, got {x.shape[-2]}x{x.shape[-1]}")
    out = _bands_like(x)
    _launch(x, out, scale, inverse=False)
    return out


@torch.library.custom_op("irn::haar_inverse", mutates_args=())
def haar_inverse(y: torch.Tensor, scale: float) -> torch.Tensor:
    _check(y, "haar_inverse input")
    if y.shape[1] % 4:
        raise ValueError(f"the inverse Haar transform needs a channel count divisible by 4, got {y.shape[1]}")
    out = _image_like(y)
    _launch(out, y, scale, inverse=True)
    return out


def _haar_flops(x_shape, scale, out_shape=None, **kwargs):
    """As FlopCounterMode counts the reference's grouped 2x2 convolution (or its transpose): 2 FLOPs for
    each of the 4 taps behind every band value (the image and its bands have as many values)."""
    return 2 * 4 * math.prod(x_shape)


for _op in (torch.ops.irn.haar_forward, torch.ops.irn.haar_inverse):
    register_flop_formula(_op)(_haar_flops)


@haar_forward.register_fake
def _(x, scale):
    return _bands_like(x)


@haar_inverse.register_fake
def _(y, scale):
    return _image_like(y)


def _save_scale(ctx, inputs, output):
    ctx.scale = inputs[1]


def _haar_forward_backward(ctx, grad):
    return haar_inverse(grad, ctx.scale), None


def _haar_inverse_backward(ctx, grad):
    return haar_forward(grad, ctx.scale), None


haar_forward.register_autograd(_haar_forward_backward, setup_context=_save_scale)
haar_inverse.register_autograd(_haar_inverse_backward, setup_context=_save_scale)


def haar(x, rev=False):
    """IRN's Haar downsampling (rev=False: bands / 4) or its exact inverse (rev=True)."""
    return haar_inverse(x, 1.0) if rev else haar_forward(x, 0.25)


LAUNCHES = {"irn::haar_forward": lambda args: 1, "irn::haar_inverse": lambda args: 1}  # one kernel per call


def aot_variants():
    """Every variant the ops launch, as (name, jit kernel, signature, constexprs) for ahead-of-time compiles."""
    variants = []
    for dtype in ("fp32", "fp16", "bf16"):
        for inverse in (False, True):
            signature = {"src": f"*{dtype}", "dst": f"*{dtype}", "C": "i32", "Wo": "i32", "P": "i32"}
            signature |= {s: "i32" for s in ("s_b", "s_c", "s_h", "s_w", "d_b", "d_c", "d_h", "d_w")}
            signature |= {"scale": "fp32", "INVERSE": "constexpr", "BLOCK": "constexpr"}
            name = f"haar_{'inverse' if inverse else 'forward'}_{dtype}"
            variants.append((name, _haar_kernel, signature, {"INVERSE": inverse, "BLOCK": BLOCK}))
    return variants
