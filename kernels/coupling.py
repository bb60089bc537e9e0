"""The elementwise part of IRN's coupling block in Triton, forward, inverse and their backward passes.

With s = clamp * (2 * sigmoid(h) - 1) and ds/dh = 2 * clamp * sigmoid(h) * (1 - sigmoid(h)):
    forward:  y = x * exp(s) + g        dx = dy * exp(s)     dh = dy * x * exp(s) * ds/dh   dg = dy
    inverse:  x = (y - g) * exp(-s)     dy = dx * exp(-s)    dh = -dx * x * ds/dh           dg = -dy
The forward saves its inputs x and h; the inverse saves its output x and h (not y and g). Each backward
is one pass over memory. Tensors are processed as rows (one per sample) of a dense block, so channel
slices of a bigger tensor (the block's x2) are read in place without a copy.
"""

import functools

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _scale(h, clamp):
    sig = tl.sigmoid(h)
    return clamp * (2.0 * sig - 1.0), 2.0 * clamp * sig * (1.0 - sig)


@triton.jit
def _row_block(N, BLOCK: tl.constexpr):
    """This program's sample (row), its block of in-row offsets, and which of them exist."""
    col = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    return tl.program_id(1).to(tl.int64), col, col < N


@triton.jit
def _load(ptr, row, stride, col, mask):
    return tl.load(ptr + row * stride + col, mask=mask).to(tl.float32)


@triton.jit
def _store(ptr, row, stride, col, value, mask):
    tl.store(ptr + row * stride + col, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _coupling_kernel(x, h, g, out, N, sx, sh, sg, so, clamp, INVERSE: tl.constexpr, BLOCK: tl.constexpr):
    row, col, mask = _row_block(N, BLOCK)
    xv, hv, gv = _load(x, row, sx, col, mask), _load(h, row, sh, col, mask), _load(g, row, sg, col, mask)
    s, _ = _scale(hv, clamp)
    if INVERSE:
        o = (xv - gv) * tl.exp(-s)
    else:
        o = xv * tl.exp(s) + gv
    _store(out, row, so, col, o, mask)


@triton.jit
def _coupling_backward_kernel(
    grad,
    saved,
    h,
    d_in,
    d_h,
    d_g,
    N,
    s_grad,
    s_saved,
    s_h,
    s_din,
    s_dh,
    s_dg,
    clamp,
    INVERSE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row, col, mask = _row_block(N, BLOCK)
    dout, sv = _load(grad, row, s_grad, col, mask), _load(saved, row, s_saved, col, mask)
    s, ds = _scale(_load(h, row, s_h, col, mask), clamp)
    if INVERSE:  # saved = the inverse's output x
        din = dout * tl.exp(-s)
        dh = -dout * sv * ds
        _store(d_g, row, s_dg, col, -din, mask)
    else:  # saved = the forward's input x
        din = dout * tl.exp(s)
        dh = din * sv * ds
    _store(d_in, row, s_din, col, din, mask)
    _store(d_h, row, s_dh, col, dh, mask)


# --- layout: every tensor as (rows, N) with one shared dense order inside a row -------------------


def _inner_dense(t):
    """Whether one sample of `t` is a dense block (any dimension order)."""
    expected = 1
    for stride, size in sorted(zip(t.stride()[1:], t.shape[1:], strict=True)):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _shared_rows(*ts):
    """The tensors in one dtype (promoted, as eager arithmetic would) and one dense in-row order: as they
    are if they share one, else made contiguous. The real ops and their fake implementations both start
    here, so the outputs' dtypes and strides cannot differ between them."""
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in ts))
    ts = tuple(t.to(dtype) for t in ts)
    if all(t.stride()[1:] == ts[0].stride()[1:] and _inner_dense(t) for t in ts):
        return ts
    return tuple(t.contiguous() for t in ts)


def _empty_rows(like, count=1):
    """Outputs shaped like `like`, one dense row per sample, in `like`'s in-row order."""
    n = like[0].numel()
    return [
        torch.empty_strided(like.shape, (n, *like.stride()[1:]), dtype=like.dtype, device=like.device)
        for _ in range(count)
    ]


MAX_ROWS = 65535  # programs along a grid's second axis (CUDA's limit): the samples


def _grid(t):
    """(blocks of a sample's elements, samples); a sample's elements are indexed in int32 (its row offset
    is int64)."""
    if t.shape[0] > MAX_ROWS:
        raise ValueError(f"the coupling kernels take at most {MAX_ROWS} samples a call, got {t.shape[0]}")
    if t[0].numel() >= 2**31:
        raise ValueError(f"the coupling kernels index a sample in int32: {tuple(t.shape)} has 2**31 elements or more")
    return (triton.cdiv(t[0].numel(), BLOCK), t.shape[0])


def _affine(x, h, g, clamp, inverse):
    x, h, g = _shared_rows(x, h, g)
    (out,) = _empty_rows(h)
    _coupling_kernel[_grid(h)](
        x,
        h,
        g,
        out,
        h[0].numel(),
        x.stride(0),
        h.stride(0),
        g.stride(0),
        out.stride(0),
        clamp,
        INVERSE=inverse,
        BLOCK=BLOCK,
    )
    return out


def _affine_backward(grad, saved, h, clamp, inverse):
    grad, saved, h = _shared_rows(grad, saved, h)
    d_in, d_h, d_g = _empty_rows(h, 3 if inverse else 2) + ([] if inverse else [grad])
    _coupling_backward_kernel[_grid(h)](
        grad,
        saved,
        h,
        d_in,
        d_h,
        d_g,
        h[0].numel(),
        grad.stride(0),
        saved.stride(0),
        h.stride(0),
        d_in.stride(0),
        d_h.stride(0),
        d_g.stride(0),
        clamp,
        INVERSE=inverse,
        BLOCK=BLOCK,
    )
    return d_in, d_h, d_g


# --- custom ops: opaque to torch.compile (no graph break), with autograd -------------------------


@torch.library.custom_op("irn::coupling_forward", mutates_args=())
def coupling_forward(x: torch.Tensor, h: torch.Tensor, g: torch.Tensor, clamp: float) -> torch.Tensor:
    return _affine(x, h, g, clamp, inverse=False)


@torch.library.custom_op("irn::coupling_inverse", mutates_args=())
def coupling_inverse(y: torch.Tensor, h: torch.Tensor, g: torch.Tensor, clamp: float) -> torch.Tensor:
    return _affine(y, h, g, clamp, inverse=True)


@torch.library.custom_op("irn::coupling_forward_backward", mutates_args=())
def coupling_forward_backward(
    grad: torch.Tensor, x: torch.Tensor, h: torch.Tensor, clamp: float
) -> tuple[torch.Tensor, torch.Tensor]:
    d_x, d_h, _ = _affine_backward(grad, x, h, clamp, inverse=False)
    return d_x, d_h


@torch.library.custom_op("irn::coupling_inverse_backward", mutates_args=())
def coupling_inverse_backward(
    grad: torch.Tensor, x: torch.Tensor, h: torch.Tensor, clamp: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _affine_backward(grad, x, h, clamp, inverse=True)


@coupling_forward.register_fake
def _(x, h, g, clamp):
    return _empty_rows(_shared_rows(x, h, g)[1])[0]


@coupling_inverse.register_fake
def _(y, h, g, clamp):
    return _empty_rows(_shared_rows(y, h, g)[1])[0]


@coupling_forward_backward.register_fake
def _(grad, x, h, clamp):
    return tuple(_empty_rows(_shared_rows(grad, x, h)[2], 2))


@coupling_inverse_backward.register_fake
def _(grad, x, h, clamp):
    return tuple(_empty_rows(_shared_rows(grad, x, h)[2], 3))


def _save_forward(ctx, inputs, output):
    x, h, _, ctx.clamp = inputs
    ctx.save_for_backward(x, h)


def _save_inverse(ctx, inputs, output):
    _, h, _, ctx.clamp = inputs
    ctx.save_for_backward(output, h)


def _forward_backward(ctx, grad):
    x, h = ctx.saved_tensors
    d_x, d_h = coupling_forward_backward(grad, x, h, ctx.clamp)
    return d_x, d_h, grad, None


def _inverse_backward(ctx, grad):
    x, h = ctx.saved_tensors
    d_y, d_h, d_g = coupling_inverse_backward(grad, x, h, ctx.clamp)
    return d_y, d_h, d_g, None


coupling_forward.register_autograd(_forward_backward, setup_context=_save_forward)
coupling_inverse.register_autograd(_inverse_backward, setup_context=_save_inverse)


def coupling(x2, h, g, clamp, rev=False):
    """IRN's affine coupling: x2 * exp(s(h)) + g, or its inverse (y2 - g) * exp(-s(h)) with rev=True."""
    return coupling_inverse(x2, h, g, clamp) if rev else coupling_forward(x2, h, g, clamp)


# one kernel per call, forward, inverse and either backward
LAUNCHES = {
    f"irn::coupling_{op}": lambda args: 1 for op in ("forward", "inverse", "forward_backward", "inverse_backward")
}


def aot_variants():
    """Every variant the ops launch, as (name, jit kernel, signature, constexprs) for ahead-of-time compiles."""
    variants = []
    for dtype in ("fp32", "fp16", "bf16"):
        for inverse in (False, True):
            direction = "inverse" if inverse else "forward"
            constexprs = {"INVERSE": inverse, "BLOCK": BLOCK}
            tensors = {name: f"*{dtype}" for name in ("x", "h", "g", "out")}
            strides = {name: "i32" for name in ("sx", "sh", "sg", "so")}
            signature = (
                tensors | {"N": "i32"} | strides | {"clamp": "fp32", "INVERSE": "constexpr", "BLOCK": "constexpr"}
            )
            variants.append((f"coupling_{direction}_{dtype}", _coupling_kernel, signature, constexprs))
            tensors = {name: f"*{dtype}" for name in ("grad", "saved", "h", "d_in", "d_h", "d_g")}
            strides = {name: "i32" for name in ("s_grad", "s_saved", "s_h", "s_din", "s_dh", "s_dg")}
            signature = (
                tensors | {"N": "i32"} | strides | {"clamp": "fp32", "INVERSE": "constexpr", "BLOCK": "constexpr"}
            )
            variants.append(
                (f"coupling_{direction}_backward_{dtype}", _coupling_backward_kernel, signature, constexprs)
            )
    return variants
