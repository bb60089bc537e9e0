"""IRN's dense block (five 3x3 convs, each seeing the input and every earlier output) in Triton.

One feature buffer F, NHWC in memory (a channels_last (B, C, H, W) tensor), holds the input F_0 = x and
the four g-channel outputs F_1..F_4: conv k reads a channel prefix of F and writes its output into the
next g channels, so there is no torch.cat. x's c_in channels are padded with zeros up to a multiple of 16
and the pixel stride is a multiple of 16, so with IRN's g = 32 every slice starts 16-element aligned
(vectorised loads). With p a pixel, o = (ky - 1, kx - 1) a tap's offset (zero padding outside the
image), s the negative slope (0.2) and c running over conv k's c_k = c_in + (k - 1) g input channels:
    Z_k[p, n] = b_k[n] + sum_{c, ky, kx} W_k[n, c, ky, kx] F[p + o, c]        (an implicit GEMM)
    F_k = Z_k if Z_k > 0 else s Z_k        (k = 1..4)        out = Z_5        (c_out channels)
The backward keeps one fp32 gradient buffer G with F's shape and strides, and walks k = 5, 4, ..., 1:
    dF[p, c] = sum_{k reading c} sum_{n, ky, kx} dZ_k[p - o, n] W_k[n, c, ky, kx]        (accumulated in G)
    dZ_5 = dout        dZ_k = dF_k * (1 if F_k > 0 else s)        (k = 1..4)
    dW_k[n, c, ky, kx] = sum_p dZ_k[p, n] F[p + o, c]        db_k[n] = sum_p dZ_k[p, n]        dx = dF_0
Step k adds conv k's input gradient into G's prefix (conv 5 writes G: no zero fill). The last g channels
of that prefix are F_{k-1}, which only convs k..5 read, so their dF is complete there: step k stores them
already multiplied by LeakyReLU's slope, as dZ_{k-1}, in the features' dtype (fp32: in G's slots of those
channels, which no later step touches otherwise; half precision: in one of two small buffers taken in
turn), for step k - 1's dots to read as plain loads, rounded once (as cuDNN gets its output gradient in
that dtype). As s > 0, F_k > 0 exactly where Z_k > 0, so the saved
post-activation gives the slope and no pre-activation is kept.

The five convs' weights are packed once per call, by one launch, into the dot's dtype as one tensor
[block, tap, buffer channel, output of any conv] with zeros where a conv reads no channel (x's padding, later
outputs) or has no output: conv k reads its columns with no mask, no index remapping and no cast.

Launches per call: forward 6 (the packing, whose programs also copy x into F, then the convs); backward 6 (the
packing, then one per step: its weight, bias and input gradients in one launch, the long weight-gradient
programs first), plus one sum of the weight-gradient partials when the pixels are reduced in more than one
split, and one cast into the weights' dtype when that is not fp32 (LAUNCHES). Every output element is written
by one program and the splits are summed in a fixed order, so the results are deterministic: no atomics.

Two blocks with the same shapes (a coupling's H and G, which read the same x: dense_blocks) run in the
launches of one, each launch with both blocks' programs: twice the programs to fill a GPU with, a third fewer
launches than the three blocks of a coupling take one by one. x, F, the outputs, G and dx hold the second
block's samples after the first's, the packed weights its weights after the first's, and the rows of
weight-gradient partials its pixel splits after the first's. Each block's results are those of its own call,
bit for bit.
"""

import functools
import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

from kernels.precision import tf32_convolutions

NEGATIVE_SLOPE = 0.2
CONVS = 5
# The first compute capability (10 * major + minor) that runs these kernels: their tiles are sized for
# sm_80+ tensor cores (TF32 and bf16 dots need sm_80; before it tl.dot becomes FMA loops) and their
# half-precision tiles spill on sm_60. Older GPUs keep cuDNN for the dense blocks (engine/model/execution.py).
MIN_CAPABILITY = 80
# Weight gradients are reduced over pixels in splits of about this many pixels, each written to its own
# fp32 row of partials and the rows summed afterwards: enough programs to fill a GPU, with partials
# small next to the features they come from.
PIXELS_PER_SPLIT = 2048
MAX_SPLITS = 32
# Channel alignment of the feature buffer, in elements (see _buffer_layout).
ALIGN = 16
BIAS_TILE = tl.constexpr(2048)  # elements a bias-gradient program sums a step
COPY_PIXELS = 128  # pixels whose channels of x a copying program moves into the feature buffer,
COPY_CHANNELS = tl.constexpr(ALIGN)  # this many channels a step

# Arguments the JIT must not specialise: a block's pixel splits, 1 for small images, which would otherwise
# make variants of the backward that no ahead-of-time compile (kernels/aot.py) checks.
UNSPECIALISED = ("splits",)

# Three interpreter quirks are worked around under it only: it keeps bf16 as raw uint16 bits, which its dot
# multiplies as integers; it truncates fp32 -> bf16 where GPUs round to nearest even; its TF32 dots are
# exact fp32 (emulated in _mma as tensor cores compute them).
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
_INTERPRETING = tl.constexpr(_INTERPRET)

# --- kernels --------------------------------------------------------------------------------------
# fmt: off


@triton.jit
def _mma(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b, accumulated in fp32."""
    if _INTERPRETING:  # fp32 operands hold fp16/bf16 values exactly
        a = a.to(tl.float32)
        b = b.to(tl.float32)
        if PRECISION == "tf32":  # as tensor cores read TF32: the low 13 of fp32's 23 mantissa bits ignored
            a = (a.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)  # -8192: 0xFFFFE000
            b = (b.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _to(x, dtype: tl.constexpr):
    """x.to(dtype), rounding to nearest even (by hand for fp32 -> bf16 in the interpreter)."""
    if _INTERPRETING and dtype == tl.bfloat16 and x.dtype == tl.float32:
        bits = x.to(tl.uint32, bitcast=True)
        bits += 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return x.to(dtype)


@triton.jit
def _divide(p, magic, shift):
    """p // d for 0 <= p < 2**31, with d's (magic, shift) from _divisor: a multiply-high, an add and a shift
    where a division by a run-time integer takes some twenty instructions. umulhi(p, magic) + p is
    floor(p m / 2**32) for m = magic + 2**32, below 2**32 as p < 2**31 and m < 2**33."""
    u = p.to(tl.uint32, bitcast=True)
    q = (tl.umulhi(u, magic.to(tl.uint32, bitcast=True)) + u) >> shift.to(tl.uint32)
    return q.to(tl.int32, bitcast=True)


@triton.jit
def _pixels(start, end, H, W, h_magic, h_shift, w_magic, w_shift, BLOCK: tl.constexpr):
    """Batch, row and column of the flat pixels start .. start + BLOCK, and which of them are < end; H's and
    W's magic numbers and shifts (_divisor) divide."""
    p = start + tl.arange(0, BLOCK)
    rows = _divide(p, w_magic, w_shift)  # b H + h
    b = _divide(rows, h_magic, h_shift)
    return b, rows - b * H, p - rows * W, p < end


@triton.jit
def _subnet_pixels(subnet, start, n_pixels, H, W, h_magic, h_shift, w_magic, w_shift, BLOCK: tl.constexpr):
    """_pixels of the pixels start .. start + BLOCK of block `subnet` (of its n_pixels), whose samples follow the
    earlier block's. Counted from the block's own first pixel, a tile's start keeps the alignment the compiler
    knows it has, which spares it index arithmetic."""
    b, h, w, valid = _pixels(start, n_pixels, H, W, h_magic, h_shift, w_magic, w_shift, BLOCK)
    samples = _divide(_divide(n_pixels, w_magic, w_shift), h_magic, h_shift)  # a block's
    return b + subnet * samples, h, w, valid


@triton.jit
def _offsets(b, h, w, s_b, s_h, s_w):
    return b.to(tl.int64) * s_b + h * s_h + w * s_w  # batch offsets are the ones that can pass 2**31


@triton.jit
def _neighbours(b, h, w, valid, dy, dx, H, W, s_b, s_h, s_w):
    """Offsets of the pixels (h + dy, w + dx), and whether they are inside the image (zero padding)."""
    hh = h + dy
    ww = w + dx
    inside = valid & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
    return _offsets(b, hh, ww, s_b, s_h, s_w), inside


@triton.jit
def _tap(i, blocks, BLOCK: tl.constexpr):
    """Step i of a loop over 9 taps x `blocks` channel blocks: kernel row, column, and the block's channels."""
    tap = i // blocks
    ky = tap // 3
    return ky, tap - 3 * ky, (i - tap * blocks) * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _input_channels(c, C_in, C_x, X_END):
    """Which of the buffer channels c a conv reads (x's C_x channels, then the outputs from X_END on, the
    channels between being padding), and each one's index among the weight's input channels."""
    valid = (c < C_x) | ((c >= X_END) & (c < C_in))
    return valid, tl.where(c < X_END, c, c - X_END + C_x)


@triton.jit
def _copy_tile(src, dst, b, h, w, valid, C, C_dst, s_b, s_c, s_h, s_w, d_b, d_c, d_h, d_w, BLOCK_K: tl.constexpr):
    """dst[pixels, :C_dst] = src[pixels, :C], then zeros: the block's input and its padding into the first
    channels of the feature buffer. The convs read the padding with x (zero weights there), so it must hold
    zeros: garbage could be NaN, and NaN x 0 is NaN."""
    s_pix = _offsets(b, h, w, s_b, s_h, s_w)
    d_pix = _offsets(b, h, w, d_b, d_h, d_w)
    for c0 in range(0, C_dst, BLOCK_K):
        c = c0 + tl.arange(0, BLOCK_K)
        tile = tl.load(src + s_pix[:, None] + c[None, :] * s_c, mask=valid[:, None] & (c < C)[None, :], other=0.0)
        tl.store(dst + d_pix[:, None] + c[None, :] * d_c, tile.to(dst.dtype.element_ty),
                 mask=valid[:, None] & (c < C_dst)[None, :])


@triton.jit
def _pack_tile(
    pid, w1, w2, w3, w4, w5, packed, C_x, X_END, GROWTH, C_OUT, C_PACKED, N_PACKED, p_t, p_c, p_n,
    BLOCK_C: tl.constexpr, BLOCK_COLS: tl.constexpr,
):
    """packed[tap, c, k g + n] = W_k[n, c', tap] in packed's dtype, for conv k's output n and the buffer
    channel c that holds its input channel c' (conv 5's outputs from 4 g on); 0 where conv k reads no such
    channel (x's padding, the outputs of conv k and later) and has no such output. Tile pid of a subnet's
    5 convs x 9 taps x channel tiles: a block of buffer channels of one tap of one conv (contiguous OIHW
    weights)."""
    tiles_c = tl.cdiv(C_PACKED, BLOCK_C)
    k = pid // (9 * tiles_c)
    tap = pid // tiles_c % 9
    pid_c = pid % tiles_c
    w = w1
    if k == 1:
        w = w2
    if k == 2:
        w = w3
    if k == 3:
        w = w4
    if k == 4:
        w = w5
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    n = tl.arange(0, BLOCK_COLS)
    c_ok, wc = _input_channels(c, X_END + k * GROWTH, C_x, X_END)
    outputs = tl.where(k < 4, GROWTH, C_OUT)
    width = tl.where(k < 4, GROWTH, N_PACKED - 4 * GROWTH)  # conv 5's columns run on to the end
    C_w = C_x + k * GROWTH
    mask = c_ok[:, None] & (n < outputs)[None, :]
    value = tl.load(w + n[None, :] * (C_w * 9) + wc[:, None] * 9 + tap, mask=mask, other=0.0)
    dst = packed + tap * p_t + c[:, None] * p_c + (k * GROWTH + n)[None, :] * p_n
    tl.store(dst, _to(value, packed.dtype.element_ty), mask=(c < C_PACKED)[:, None] & (n < width)[None, :])


@triton.jit
def _pack_kernel(
    w1, w2, w3, w4, w5, v1, v2, v3, v4, v5, packed, x, features,
    C_x, X_END, GROWTH, C_OUT, C_PACKED, N_PACKED, n_pixels, H, W, h_magic, h_shift, w_magic, w_shift,
    p_s, p_t, p_c, p_n,
    s_b, s_c, s_h, s_w,  # x
    d_b, d_c, d_h, d_w,  # the feature buffer
    BLOCK_C: tl.constexpr, BLOCK_COLS: tl.constexpr, COPY_PIXELS: tl.constexpr,
):
    """For subnet program_id(1) (0: weights w, 1: v): its five convs' weights packed into packed[subnet]
    (_pack_tile) by the first 5 x 9 x channel-tiles programs; with COPY_PIXELS (the forward), its n_pixels
    pixels of x (after the earlier subnet's) copied into the feature buffer's first X_END channels, padded
    with zeros, COPY_PIXELS pixels a program, by the others. Conv 1 then reads that aligned copy 16 bytes at a time,
    where x's own pixels, C_x elements apart, take a load an element."""
    pid = tl.program_id(0)
    subnet = tl.program_id(1)
    if subnet == 1:
        w1 = v1
        w2 = v2
        w3 = v3
        w4 = v4
        w5 = v5
    tiles = 45 * tl.cdiv(C_PACKED, BLOCK_C)  # 5 convs x 9 taps x channel tiles
    if pid < tiles:
        _pack_tile(pid, w1, w2, w3, w4, w5, packed + subnet * p_s, C_x, X_END, GROWTH, C_OUT, C_PACKED, N_PACKED,
                   p_t, p_c, p_n, BLOCK_C, BLOCK_COLS)
    elif COPY_PIXELS > 0:  # a static branch: the backward's packing has no copying code
        start = (pid - tiles) * COPY_PIXELS
        b, h, w, valid = _subnet_pixels(subnet, start, n_pixels, H, W, h_magic, h_shift, w_magic, w_shift, COPY_PIXELS)
        _copy_tile(x, features, b, h, w, valid, C_x, X_END, s_b, s_c, s_h, s_w, d_b, d_c, d_h, d_w, COPY_CHANNELS)


@triton.jit
def _conv3x3_kernel(
    src, packed, bias, bias_1, out,
    n_pixels, H, W, h_magic, h_shift, w_magic, w_shift, C_in, C_out,
    s_b, s_c, s_h, s_w,  # src: the feature buffer's channel prefix
    p_s, p_t, p_c, p_n,  # packed: the packed weights from this conv's first output column on
    o_b, o_c, o_h, o_w,  # out: the conv's slice of the feature buffer, or the block output (conv 5)
    negative_slope,
    ACTIVATION: tl.constexpr, PRECISION: tl.constexpr, SUBNETS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One (pixels x output channels) tile of a 3x3 conv of subnet program_id(2) of SUBNETS (its n_pixels pixels
    follow the earlier subnet's in src and out; its weights are packed[subnet], its bias bias or bias_1); its
    GEMM's K runs over 9 taps x C_in channels."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    subnet = 0
    if SUBNETS > 1:  # a static branch: one block's launches have no block offsets to add in their main loop
        subnet = tl.program_id(2)
    b, h, w, valid = _subnet_pixels(subnet, pid_m * BLOCK_M, n_pixels, H, W, h_magic, h_shift, w_magic, w_shift,
                                    BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < C_out
    columns = subnet * p_s + n * p_n  # of the packed weights, with the offset in them: no pointer more through the loop
    blocks = tl.cdiv(C_in, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # one flat loop over (tap, channel block), which the compiler pipelines even when C_in is small
    for i in range(9 * blocks):
        ky, kx, c = _tap(i, blocks, BLOCK_K)
        pix, inside = _neighbours(b, h, w, valid, ky - 1, kx - 1, H, W, s_b, s_h, s_w)
        # masked on the prefix alone (the padding holds zeros, and so do its packed weights): constant over
        # 16 channels, so the 16-aligned buffer is read in 16-byte vectors
        a = tl.load(src + pix[:, None] + c[None, :] * s_c, mask=inside[:, None] & (c < C_in)[None, :], other=0.0)
        wt = tl.load(packed + (3 * ky + kx) * p_t + c[:, None] * p_c + columns[None, :])  # no mask: see _pack
        acc = _mma(a, wt, acc, PRECISION)
    if subnet == 1:  # chosen after the loop, so that no pointer is held in registers through it
        bias = bias_1
    acc += tl.load(bias + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if ACTIVATION:
        acc = tl.where(acc > 0, acc, acc * negative_slope)
    o_pix = _offsets(b, h, w, o_b, o_h, o_w)
    mask = valid[:, None] & n_ok[None, :]
    tl.store(out + o_pix[:, None] + n[None, :] * o_c, _to(acc, out.dtype.element_ty), mask=mask)


@triton.jit
def _input_grad_tile(
    pid, grad, feat, packed, acc_src, dst, dz_out,
    n_pixels, H, W, h_magic, h_shift, w_magic, w_shift, C_in, C_x, C_OUT: tl.constexpr, tail_start,
    g_b, g_c, g_h, g_w, f_b, f_c, f_h, f_w, d_b, d_c, d_h, d_w, z_b, z_c, z_h, z_w, p_s, p_t, p_c, p_n,
    negative_slope,
    ACCUMULATE: tl.constexpr, SLOPE_TAIL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dst[p, c] = (acc_src[p, c] +) sum_{n, tap} dZ[p - o, n] W[n, c, tap] on one (pixels x input channels)
    tile, its GEMM's K running over 9 taps x C_OUT; the channels from tail_start on (the previous conv's
    output, complete now) leave multiplied by LeakyReLU's slope into dz_out instead, in its dtype: the
    previous conv's dZ, rounded once for the dots of its step. The blocks' pixel tiles follow one another, each
    block's n_pixels pixels after the earlier block's, its weights packed[subnet]."""
    tiles_c = tl.cdiv(C_in, BLOCK_N)
    pid_m = pid // tiles_c
    c = (pid - pid_m * tiles_c) * BLOCK_N + tl.arange(0, BLOCK_N)
    tiles_m = tl.cdiv(n_pixels, BLOCK_M)
    subnet = (pid_m >= tiles_m).to(tl.int32)  # two blocks at most: a comparison, not a division
    packed += subnet * p_s
    start = (pid_m - subnet * tiles_m) * BLOCK_M
    b, h, w, valid = _subnet_pixels(subnet, start, n_pixels, H, W, h_magic, h_shift, w_magic, w_shift, BLOCK_M)
    dtype = feat.dtype.element_ty  # dZ rounded to the features' dtype for the dot, as cuDNN gets it
    blocks: tl.constexpr = (C_OUT + BLOCK_K - 1) // BLOCK_K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in range(9 * blocks):
        ky, kx, n = _tap(i, blocks, BLOCK_K)
        n_ok = n < C_OUT
        g_pix, inside = _neighbours(b, h, w, valid, 1 - ky, 1 - kx, H, W, g_b, g_h, g_w)
        dz = tl.load(grad + g_pix[:, None] + n[None, :] * g_c, mask=inside[:, None] & n_ok[None, :], other=0.0)
        wt = tl.load(packed + (3 * ky + kx) * p_t + c[None, :] * p_c + n[:, None] * p_n)  # no mask: see _pack
        acc = _mma(_to(dz, dtype), wt, acc, PRECISION)
    mask = valid[:, None] & (c < C_in)[None, :]  # padding channels get zeros, never garbage
    f_pix = _offsets(b, h, w, f_b, f_h, f_w)
    if ACCUMULATE:  # what the later convs left in G
        acc += tl.load(acc_src + f_pix[:, None] + c[None, :] * f_c, mask=mask, other=0.0)
    if SLOPE_TAIL:  # other=1 keeps the rest; compared in fp32, as the interpreter compares bf16's raw bits
        tail = mask & (c >= tail_start)[None, :]
        y = tl.load(feat + f_pix[:, None] + c[None, :] * f_c, mask=tail, other=1.0).to(tl.float32)
        dz = tl.where(y > 0, acc, acc * negative_slope)
        z = dz_out + _offsets(b, h, w, z_b, z_h, z_w)[:, None] + (c - tail_start)[None, :] * z_c
        tl.store(z, _to(dz, dz_out.dtype.element_ty), mask=tail)
        mask = mask & (c < tail_start)[None, :]
    else:  # conv 1: dx holds x's C_x channels, not the buffer's padding after them
        mask = mask & (c < C_x)[None, :]
    d_pix = _offsets(b, h, w, d_b, d_h, d_w)
    tl.store(dst + d_pix[:, None] + c[None, :] * d_c, _to(acc, dst.dtype.element_ty), mask=mask)


@triton.jit
def _transposed_features(feat, f_pix, c, f_c, c_ok, valid):
    """F^T, (channels x pixels), for the weight gradient's dot, read along the contiguous channels 16 bytes at a
    time. fp32 is loaded as F^T itself: TF32 dots take their operands K-major, and a (pixels x channels) tile
    would be read along the pixels, 4 bytes at a time. Half precision is loaded as F and transposed, which the
    compiler addresses with fewer instructions."""
    if feat.dtype.element_ty == tl.float32:
        return tl.load(feat + c[:, None] * f_c + f_pix[None, :], mask=c_ok[:, None] & valid[None, :], other=0.0)
    return tl.trans(tl.load(feat + f_pix[:, None] + c[None, :] * f_c, mask=valid[:, None] & c_ok[None, :], other=0.0))


@triton.jit
def _split_of(row, splits, split_len, n_pixels):
    """The first pixel and one past the last of a row of partials: one of the `splits` pixel splits (split_len
    pixels) of one block's n_pixels, the blocks' splits one after the other (their pixels too; two blocks at
    most, told apart by a comparison where a division by a run-time integer takes some twenty instructions)."""
    subnet = (row >= splits).to(tl.int32)
    first = subnet * n_pixels
    start = first + (row - subnet * splits) * split_len
    return start, tl.minimum(start + split_len, first + n_pixels)


@triton.jit
def _shifted_grad(grad, b, h, w, valid, dy, dx, n, C_OUT: tl.constexpr, H, W, g_b, g_c, g_h, g_w):
    """dZ at the pixels (h + dy, w + dx), zero outside the image."""
    pix, inside = _neighbours(b, h, w, valid, dy, dx, H, W, g_b, g_h, g_w)
    return tl.load(grad + pix[:, None] + n[None, :] * g_c, mask=inside[:, None] & (n < C_OUT)[None, :], other=0.0)


@triton.jit
def _store_weight_grad(row, acc, c, n, tap, n_ok, C_in, C_x, X_END):
    """A dW^T tile into a row of partials, where dW is (n, c, ky, kx) contiguous (so that its slot views as the
    weight's shape); tap: one tap, or each column's."""
    C_w = C_in - X_END + C_x
    c_ok, wc = _input_channels(c, C_in, C_x, X_END)
    tl.store(row + n[None, :] * (C_w * 9) + wc[:, None] * 9 + tap, acc, mask=c_ok[:, None] & n_ok[None, :])


@triton.jit
def _weight_grad_row_tile(
    pid, grad, feat, partials,
    n_pixels, H, W, h_magic, h_shift, w_magic, w_shift, C_in, C_x, X_END, splits, split_len, weight_slot,
    partial_stride, g_b, g_c, g_h, g_w, f_b, f_c, f_h, f_w,
    C_OUT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_WN: tl.constexpr,
    BLOCK_WC: tl.constexpr,
):
    """One (input x output channels) tile of dW^T for the three taps of one kernel row, summed over one pixel
    split into that split's row of partials. As q runs over the pixels, dW[n, c, tap] = sum_q F[q, c]
    dZ[q - o, n]: the features are read once for the three taps, unshifted, and the gradient shifted for each
    (each tile's addresses a pixel's, plus a constant per output)."""
    tiles_c = tl.cdiv(C_in, BLOCK_WC)
    tiles_n: tl.constexpr = (C_OUT + BLOCK_WN - 1) // BLOCK_WN
    pid_c = pid % tiles_c
    pid_n = (pid // tiles_c) % tiles_n
    ky = (pid // (tiles_c * tiles_n)) % 3
    start, end = _split_of(pid // (tiles_c * tiles_n * 3), splits, split_len, n_pixels)
    c = pid_c * BLOCK_WC + tl.arange(0, BLOCK_WC)
    n = pid_n * BLOCK_WN + tl.arange(0, BLOCK_WN)
    left = tl.zeros((BLOCK_WC, BLOCK_WN), dtype=tl.float32)
    middle = tl.zeros((BLOCK_WC, BLOCK_WN), dtype=tl.float32)
    right = tl.zeros((BLOCK_WC, BLOCK_WN), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        b, h, w, valid = _pixels(p0, end, H, W, h_magic, h_shift, w_magic, w_shift, BLOCK_P)
        xt = _transposed_features(feat, _offsets(b, h, w, f_b, f_h, f_w), c, f_c, c < C_in, valid)
        dz = _shifted_grad(grad, b, h, w, valid, 1 - ky, 1, n, C_OUT, H, W, g_b, g_c, g_h, g_w)
        left = _mma(xt, _to(dz, xt.dtype), left, PRECISION)
        dz = _shifted_grad(grad, b, h, w, valid, 1 - ky, 0, n, C_OUT, H, W, g_b, g_c, g_h, g_w)
        middle = _mma(xt, _to(dz, xt.dtype), middle, PRECISION)
        dz = _shifted_grad(grad, b, h, w, valid, 1 - ky, -1, n, C_OUT, H, W, g_b, g_c, g_h, g_w)
        right = _mma(xt, _to(dz, xt.dtype), right, PRECISION)
    row = partials + (pid // (tiles_c * tiles_n * 3)).to(tl.int64) * partial_stride + weight_slot
    _store_weight_grad(row, left, c, n, 3 * ky, n < C_OUT, C_in, C_x, X_END)
    _store_weight_grad(row, middle, c, n, 3 * ky + 1, n < C_OUT, C_in, C_x, X_END)
    _store_weight_grad(row, right, c, n, 3 * ky + 2, n < C_OUT, C_in, C_x, X_END)


@triton.jit
def _weight_grad_taps_tile(
    pid, grad, feat, partials,
    n_pixels, H, W, h_magic, h_shift, w_magic, w_shift, C_in, C_x, X_END, splits, split_len, weight_slot,
    partial_stride, g_b, g_c, g_h, g_w, f_b, f_c, f_h, f_w,
    C_OUT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_WN: tl.constexpr,
    BLOCK_WC: tl.constexpr,
):
    """As _weight_grad_row_tile, for fewer outputs than a dot's N (conv 5's 3 or 9): the tile's columns
    j = tap C_OUT + n run over the nine taps' outputs, so that they fill it rather than 3 of its 16 columns
    with one tap; each column's gradient is gathered at its own tap's shift (an address and a mask an
    element)."""
    tiles_c = tl.cdiv(C_in, BLOCK_WC)
    tiles_j: tl.constexpr = (9 * C_OUT + BLOCK_WN - 1) // BLOCK_WN
    pid_c = pid % tiles_c
    split = pid // (tiles_c * tiles_j)
    start, end = _split_of(split, splits, split_len, n_pixels)
    c = pid_c * BLOCK_WC + tl.arange(0, BLOCK_WC)
    j = (pid // tiles_c) % tiles_j * BLOCK_WN + tl.arange(0, BLOCK_WN)
    tap = j // C_OUT
    n = j - tap * C_OUT
    dy = tap // 3 - 1
    dx = tap - 3 * (tap // 3) - 1
    j_ok = j < 9 * C_OUT
    shifted = n * g_c - dy * g_h - dx * g_w  # dZ[q - o, n] from q's pixel
    acc = tl.zeros((BLOCK_WC, BLOCK_WN), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        b, h, w, valid = _pixels(p0, end, H, W, h_magic, h_shift, w_magic, w_shift, BLOCK_P)
        xt = _transposed_features(feat, _offsets(b, h, w, f_b, f_h, f_w), c, f_c, c < C_in, valid)
        hh = h[:, None] - dy[None, :]
        ww = w[:, None] - dx[None, :]
        inside = valid[:, None] & j_ok[None, :] & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        g_pix = _offsets(b, h, w, g_b, g_h, g_w)
        dz = tl.load(grad + g_pix[:, None] + shifted[None, :], mask=inside, other=0.0)
        acc = _mma(xt, _to(dz, xt.dtype), acc, PRECISION)
    row = partials + split.to(tl.int64) * partial_stride + weight_slot
    _store_weight_grad(row, acc, c, n, tap[None, :], j_ok, C_in, C_x, X_END)


@triton.jit
def _bias_grad_tile(
    pid, grad, partials, n_pixels, H, W, h_magic, h_shift, w_magic, w_shift, splits, split_len, bias_slot,
    partial_stride, g_b, g_c, g_h, g_w, C_OUT: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """db[n] = sum_p dZ[p, n] over one pixel split, for BLOCK_N of the outputs, into that split's row of
    partials, in tiles of 2,048 elements (16 a thread: the costs of a step shared by many pixels)."""
    BLOCK_P: tl.constexpr = BIAS_TILE // BLOCK_N
    tiles_n: tl.constexpr = (C_OUT + BLOCK_N - 1) // BLOCK_N
    split = pid // tiles_n
    n = (pid - split * tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    start, end = _split_of(split, splits, split_len, n_pixels)
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        b, h, w, valid = _pixels(p0, end, H, W, h_magic, h_shift, w_magic, w_shift, BLOCK_P)
        g_pix = _offsets(b, h, w, g_b, g_h, g_w)
        acc += tl.load(grad + g_pix[:, None] + n[None, :] * g_c, mask=valid[:, None] & (n < C_OUT)[None, :], other=0.0)
    row = partials + split.to(tl.int64) * partial_stride
    tl.store(row + bias_slot + n, tl.sum(acc, axis=0), mask=n < C_OUT)


@triton.jit(do_not_specialize=UNSPECIALISED)
def _conv3x3_backward_kernel(
    grad, feat, packed, acc_src, dst, dz_out, partials,
    n_pixels, H, W, h_magic, h_shift, w_magic, w_shift, C_in, C_x, X_END, tail_start,
    splits, split_len, weight_slot, bias_slot, partial_stride, weight_programs, bias_programs,
    g_b, g_c, g_h, g_w,  # grad: dout (conv 5), or this conv's dZ (_dz_buffers)
    f_b, f_c, f_h, f_w,  # the feature buffer F; the gradient buffer G (acc_src) has the same strides
    d_b, d_c, d_h, d_w,  # dst: G, or dx for conv 1
    z_b, z_c, z_h, z_w,  # dz_out: the previous conv's dZ (_dz_buffers), which this step completes
    p_s, p_t, p_c, p_n,  # the packed weights from this conv's first output column on
    negative_slope,
    C_OUT: tl.constexpr, ACCUMULATE: tl.constexpr, SLOPE_TAIL: tl.constexpr, INPUT_GRAD: tl.constexpr,
    PRECISION: tl.constexpr, TAP_COLUMNS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_WN: tl.constexpr, BLOCK_WC: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """A conv's whole backward step in one launch: the first programs compute weight-gradient tiles (the long
    ones, first so that no wave ends on them; with TAP_COLUMNS the nine taps' outputs as columns), the next
    bias-gradient tiles, the others input-gradient tiles. What one group writes the others never read
    (partials vs G's prefix). With two blocks, each group holds both blocks' programs (theirs the rows of partials
    after the first's: _split_of; their pixel tiles after the first's), and a block's n_pixels pixels follow the
    earlier block's in every buffer, its weights packed[subnet]."""
    pid = tl.program_id(0)
    if pid < weight_programs:
        if TAP_COLUMNS:
            _weight_grad_taps_tile(
                pid, grad, feat, partials, n_pixels, H, W, h_magic, h_shift, w_magic, w_shift, C_in, C_x, X_END,
                splits, split_len, weight_slot, partial_stride, g_b, g_c, g_h, g_w, f_b, f_c, f_h, f_w,
                C_OUT, PRECISION, BLOCK_P, BLOCK_WN, BLOCK_WC,
            )
        else:
            _weight_grad_row_tile(
                pid, grad, feat, partials, n_pixels, H, W, h_magic, h_shift, w_magic, w_shift, C_in, C_x, X_END,
                splits, split_len, weight_slot, partial_stride, g_b, g_c, g_h, g_w, f_b, f_c, f_h, f_w,
                C_OUT, PRECISION, BLOCK_P, BLOCK_WN, BLOCK_WC,
            )
    elif pid < weight_programs + bias_programs:
        _bias_grad_tile(
            pid - weight_programs, grad, partials, n_pixels, H, W, h_magic, h_shift, w_magic, w_shift, splits,
            split_len, bias_slot, partial_stride, g_b, g_c, g_h, g_w, C_OUT, BLOCK_B,
        )
    elif INPUT_GRAD:  # a static branch without INPUT_GRAD: no input-gradient code
        _input_grad_tile(
            pid - weight_programs - bias_programs, grad, feat, packed, acc_src, dst, dz_out, n_pixels, H, W,
            h_magic, h_shift, w_magic, w_shift, C_in, C_x, C_OUT, tail_start, g_b, g_c, g_h, g_w, f_b, f_c, f_h, f_w,
            d_b, d_c, d_h, d_w, z_b, z_c, z_h, z_w, p_s, p_t, p_c, p_n, negative_slope, ACCUMULATE, SLOPE_TAIL,
            PRECISION,
            BLOCK_M, BLOCK_N, BLOCK_K,
        )


# fmt: on
# --- tile configs: pixels per tile, chosen once per shape; channel tiles follow the channel counts -----

# Every config has 4 warps and 3 stages, Triton's default compile options, so an ahead-of-time compile
# with default options builds exactly what a launch may take. The interpreter gets one config.
_GPU_FORWARD_CONFIGS = [triton.Config({"BLOCK_M": m}, num_warps=4, num_stages=3) for m in (64, 128)]
_GPU_BACKWARD_CONFIGS = [triton.Config({"BLOCK_M": m}, num_warps=4, num_stages=3) for m in (32, 64)]
_FORWARD_CONFIGS, _BACKWARD_CONFIGS = _GPU_FORWARD_CONFIGS, _GPU_BACKWARD_CONFIGS
if _INTERPRET:  # one config with large pixel tiles: the interpreter's cost is per program and loop step
    _FORWARD_CONFIGS = [triton.Config({"BLOCK_M": 128}, num_warps=4, num_stages=3)]
    _BACKWARD_CONFIGS = [triton.Config({"BLOCK_M": 128}, num_warps=4, num_stages=3)]
# Whether the channel tiles, K steps and pixel steps below are the interpreter's (larger: fewer programs
# and loop steps) rather than a GPU's. A test sets it False, with one of the GPU configs, to run a GPU's.
_INTERPRETER_TILES = _INTERPRET
# The config each launch takes, by Launch.key, as tune() chose it (engine/model/dense_choice.py tunes each
# dense-block shape once at start-up, on scratch buffers, and every rank takes rank 0's choices); a launch
# whose key has none takes the choice of the nearest pixel count, else its first candidate. The op itself
# never times anything: it runs the same in a CUDA-graph capture, and gives the same bits in every process
# that took the same choices.
_CHOSEN = {}


def _backward_configs(configs, dtype, precision):
    """The backward configs a launch may take for features in `dtype` with dots of `precision`: 32-pixel
    tiles only for FMA dots (fp32 without TF32), whose operands live in registers: with 64, conv 5 of a
    3 -> 24 block spills 8 bytes on sm_90 (ptxas 12.9)."""
    if _fma_dots(dtype, precision):
        return [config for config in configs if config.kwargs["BLOCK_M"] <= 32] or configs
    return configs


def _forward_configs(configs, dtype, precision):
    """The forward configs a launch may take: 64-pixel tiles only for FMA dots (with 128, conv 5's store of
    the block output spills 32 bytes on sm_90, ptxas 12.9)."""
    if _fma_dots(dtype, precision):
        return [config for config in configs if config.kwargs["BLOCK_M"] <= 64] or configs
    return configs


def launch_config(launch):
    """The config a launch runs with: the one chosen for its key, else the one chosen for the same launch at
    the nearest pixel count, else its first candidate."""
    candidates = launch_configs(launch)
    chosen = _CHOSEN.get(launch.key) or _nearest_choice(launch.key)
    return next((c for c in candidates if c.kwargs == chosen), candidates[0])


def _nearest_choice(key):
    """The choice made for the same launch at the pixel count nearest to key's (in powers of two), or None:
    start-up tunes the training crops' shapes, and a validation image then takes their choice."""
    if key is None:
        return None
    launch, bucket = key
    near = [(abs(math.log2(b / bucket)), kwargs) for (other, b), kwargs in _CHOSEN.items() if other == launch]
    return min(near, key=lambda found: found[0])[1] if near else None


def tune(launches, time):
    """Choose the config of each launch that has several and whose key has none yet: the fastest by time(run),
    the milliseconds of run() on the GPU, run on the launches' own buffers (scratch: what they compute is not
    read). Nothing inside a CUDA-graph capture (its launches take what was chosen before it, else their first
    configs). Returns {key: the chosen config's kwargs} of the keys chosen now."""
    chosen = {}
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return chosen
    for launch in launches:
        candidates = launch_configs(launch)
        if len(candidates) > 1 and launch.key not in _CHOSEN:
            times = [time(functools.partial(_launch, launch, config)) for config in candidates]
            _CHOSEN[launch.key] = chosen[launch.key] = candidates[times.index(min(times))].kwargs
    return chosen


def chosen_configs():
    """{Launch.key: the config's kwargs} of every choice made so far (for other processes to adopt)."""
    return dict(_CHOSEN)


def adopt_configs(chosen):
    """Take these choices ({Launch.key: the config's kwargs}) in place of this process's own."""
    _CHOSEN.clear()
    _CHOSEN.update(chosen)


K_TILE = 64  # channels a K-step of fp16/bf16 dots on a GPU (fp32: half); the interpreter's tiles double it
INPUT_GRAD_N = 64  # input channels an input-gradient tile, at most (FMA dots: half)


def _tile(channels, smallest, largest):
    """The power-of-two tile covering `channels`, at least tl.dot's minimum, at most a register budget
    (doubled in the interpreter, whose cost is per program)."""
    return min(2 * largest if _INTERPRETER_TILES else largest, max(smallest, triton.next_power_of_2(channels)))


def _k_tile(dtype):
    """The GEMMs' K step over channels: fp32 operands take twice the registers of fp16/bf16 ones (and the
    FMA dot of fp32 without TF32 more again), so on GPUs they step by half as many to stay clear of spills."""
    return K_TILE // 2 if dtype == torch.float32 and not _INTERPRETER_TILES else K_TILE


def _fma_dots(dtype, precision):
    """Whether the dots are FMA loops (fp32 without TF32), whose operands live in registers, not tensor cores':
    their tiles are smaller, or ptxas 12.9 spills."""
    return dtype == torch.float32 and precision == "ieee"


def _pixel_step(dtype, grad, channels, precision, tap_columns):
    """Pixels per step of the weight-gradient reduction (its GEMM's K), 64 in half precision and 32 in fp32 or
    with tap columns; the interpreter pays per step. Half
    as many for a gradient whose channels are not contiguous in row tiles (conv 5's, the op's own in NCHW:
    each of its elements takes its own address, and those of the three shifted tiles of a step must fit in
    registers), for features masked channel by channel (a prefix of the buffer that is not a multiple of 16
    channels: a growth that is not, as IRN's 32 is; a predicate an element) and for FMA dots: otherwise ptxas
    12.9 spills 8 to 24 bytes in some of them."""
    narrow = (grad.stride(1) != 1 and not tap_columns) or channels % ALIGN or _fma_dots(dtype, precision)
    step = 32 if dtype == torch.float32 or tap_columns else 64  # tap columns: a gathered tile's own addresses
    return 128 if _INTERPRETER_TILES else step // (2 if narrow else 1)


def _divisor(d):
    """(magic, shift) with which _divide computes p // d for 0 <= p < 2**31 by a multiply-high: shift =
    ceil(log2 d), magic = ceil(2**(32 + shift) / d) - 2**32, as the int32 of its bits (the round-up method of
    Granlund and Montgomery: exact as long as p (m d - 2**(32 + shift)) < 2**(32 + shift), true for d <= 2**shift)."""
    shift = (d - 1).bit_length()
    magic = -(-(1 << (32 + shift)) // d) - (1 << 32)
    return magic - (1 << 32) if magic >= 1 << 31 else magic, shift


def _pixel_bucket(n_pixels):
    """Tiles are chosen once per power of two of a block's pixel count, not once per image size."""
    return triton.next_power_of_2(n_pixels)


def _dot_precision(dtype, tf32):
    """tl.dot's input precision: fp32 convs take TF32 when `tf32` (PyTorch lets its convolutions take it:
    kernels/precision.py, read once per op call); fp16/bf16 operands are exact either way."""
    return "tf32" if dtype == torch.float32 and tf32 else "ieee"


# --- layouts, shared by the real ops and their fake implementations ----------------------------


def _is_channels_last(x):
    """Whether x keeps channels innermost (channels_last, or a channel slice of a channels_last tensor)."""
    return x.stride(1) == 1 and x.shape[1] > 1 and not x.is_contiguous()


def _block_tensor(b, c, h, w, dtype, device, channels_last):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(b, c, h, w, dtype=dtype, device=device, memory_format=memory_format)


def _round_up(n, multiple):
    return -(-n // multiple) * multiple


def _buffer_layout(c_in, growth):
    """(where F_1 starts, channels, pixel stride) of the feature buffer: x in channels [0, c_in), padding up
    to a multiple of ALIGN, then F_1..F_4. With IRN's growth of 32 every conv's output slice and every
    pixel then starts 16-element aligned, and the JIT (which specialises 16-divisible ints and 16-byte
    aligned pointers) vectorises the loads."""
    x_end = _round_up(c_in, ALIGN)
    channels = x_end + 4 * growth
    return x_end, channels, _round_up(channels, ALIGN)


def _subnets(weights):
    """How many dense blocks (subnets) the op runs: one, or two (five weights each), the kernels' limit."""
    if len(weights) not in (CONVS, 2 * CONVS):
        raise ValueError(f"dense_block needs {CONVS} weights a block, for one or two blocks, got {len(weights)}")
    return len(weights) // CONVS


def _check_samples(samples, weights):
    if samples % _subnets(weights):
        raise ValueError(f"two dense blocks take an even number of samples, half each, got {samples}")


def _shapes(x, weights, biases):
    """(c_in, growth, c_out), after checking that the weights and biases are those of one dense block for x,
    or of two with the same shapes and dtypes (each on half of x's samples)."""
    if x.dim() != 4:
        raise ValueError(f"dense_block input must be (B, C, H, W), got shape {tuple(x.shape)}")
    if len(biases) != len(weights):
        raise ValueError(f"dense_block needs a bias for each weight, got {len(weights)} and {len(biases)}")
    _check_samples(x.shape[0], weights)
    for kind, params in (("weights", weights), ("biases", biases)):
        if len({(p.dtype, p.device) for p in params}) > 1:  # the kernels choose among their pointers
            raise ValueError(f"a dense block's {kind} must share one dtype and device, got {_dtypes(params)}")
    c_in, growth, c_out = x.shape[1], weights[0].shape[0], weights[CONVS - 1].shape[0]
    for k in range(len(weights)):
        expected = (c_out if k % CONVS == CONVS - 1 else growth, c_in + k % CONVS * growth, 3, 3)
        if tuple(weights[k].shape) != expected or tuple(biases[k].shape) != expected[:1]:
            raise ValueError(
                f"conv {k % CONVS + 1} of a dense block on {c_in} channels needs a weight {expected} and a bias "
                f"{expected[:1]}, got {tuple(weights[k].shape)} and {tuple(biases[k].shape)}"
            )
    return c_in, growth, c_out


def _dtypes(params):
    return ", ".join(sorted({f"{str(p.dtype).removeprefix('torch.')} on {p.device}" for p in params}))


def _forward_outputs(x, weights, biases):
    """The block output (x's dtype and memory format) and the NHWC feature buffer, in x's dtype; for two
    blocks, the second's samples after the first's in both, as in x."""
    c_in, growth, c_out = _shapes(x, weights, biases)
    b, _, h, w = x.shape
    out = _block_tensor(b, c_out, h, w, x.dtype, x.device, _is_channels_last(x))
    _, channels, stride = _buffer_layout(c_in, growth)
    strides = (h * w * stride, 1, w * stride, stride)
    return out, torch.empty_strided((b, channels, h, w), strides, dtype=x.dtype, device=x.device)


def _gradient_buffer(features):
    """G: fp32, with the feature buffer's shape and strides (the kernels index both with one set)."""
    return torch.empty_strided(features.shape, features.stride(), dtype=torch.float32, device=features.device)


def _dz_buffers(gbuf, features, x_end, growth):
    """dZ of convs 1..4, in the features' dtype: the step that completes one stores it rounded once, and the
    next step's dots read it as it is. fp32: G's own slice of that conv's output channels, which no later
    step touches otherwise. Half precision: two NHWC buffers taken in turn (a step reads one and writes the
    other), not G's slots: 16-bit values packed into G's fp32 slots from the output's first channel on
    would land, for a channel tile that starts inside the output, in the slots of the tile before it, which
    that tile's program of the same launch may still be reading."""
    if features.dtype == torch.float32:
        return [gbuf[:, x_end + k * growth : x_end + (k + 1) * growth] for k in range(CONVS - 1)]
    b, _, h, w = features.shape
    pair = [
        torch.empty_strided(
            (b, growth, h, w), (h * w * growth, 1, w * growth, growth), dtype=features.dtype, device=features.device
        )  # fmt: skip
        for _ in range(2)
    ]
    return [pair[k % 2] for k in range(CONVS - 1)]


def _param_slots(weights):
    """Each conv's (weight, bias) offsets in the flat parameter gradient, and the flat size (the second block's
    after the first's)."""
    slots, offset = [], 0
    for weight in weights:
        slots.append((offset, offset + weight.numel()))
        offset += weight.numel() + weight.shape[0]
    return slots, offset


def _block_pixels(features, weights):
    """The pixels of one block's samples of the feature buffer."""
    return features.shape[0] // _subnets(weights) * features.shape[2] * features.shape[3]


def _backward_outputs(features, weights, channels_last, input_grad):
    """dx (x's dtype and memory format; empty when x needs no gradient) and the flat parameter gradient."""
    _check_samples(features.shape[0], weights)
    b, _, h, w = features.shape
    if input_grad:
        dx = _block_tensor(b, weights[0].shape[1], h, w, features.dtype, features.device, channels_last)
    else:
        dx = features.new_empty(0)
    return dx, weights[0].new_empty(_param_slots(weights)[1])


def _pixel_splits(n_pixels):
    """(how many pixel splits reduce the weight gradients, pixels per split)."""
    splits = max(1, min(MAX_SPLITS, triton.cdiv(n_pixels, PIXELS_PER_SPLIT)))
    split_len = max(1, triton.cdiv(n_pixels, splits))
    return max(1, triton.cdiv(n_pixels, split_len)), split_len


# --- launchers: the launches as Launch records, run by _run ----------------------------------------


class Launch(NamedTuple):
    """One kernel launch, kernel[grid](*args, **constexprs, **a config's kwargs). work(meta) says what its
    programs execute under a config's meta-parameters, as the forecast (profiling/bench/forecast.py) counts
    it: a list of (programs, {jit function holding a loop: (trips, multiply-accumulates per trip)}), 0 trips
    for a function those programs never enter. key: what its config is chosen for (_CHOSEN): (its kernel,
    dtypes, channel counts, blocks and constexprs; the power of two of a block's pixel count); None for a launch
    with one config."""

    kernel: object
    grid: object
    args: list
    constexprs: dict
    work: object
    key: tuple = None


def _forward_tiles(c_in, c_out, dtype):
    """{BLOCK_N, BLOCK_K} of a conv's forward on c_in channels into c_out: N over its outputs, K over its
    input channels."""
    return {"BLOCK_N": _tile(c_out, 16, 32), "BLOCK_K": _tile(c_in, 16, _k_tile(dtype))}


def _input_grad_tiles(c_in, c_out, dtype, precision=None):
    """{BLOCK_N, BLOCK_K} of a conv's input gradient: N over its input channels (half as many for FMA dots),
    K over its outputs."""
    n_tile = INPUT_GRAD_N // 2 if _fma_dots(dtype, precision) else INPUT_GRAD_N
    return {"BLOCK_N": _tile(c_in, 16, n_tile), "BLOCK_K": _tile(c_out, 16, _k_tile(dtype))}


def _weight_grad_tiles(c_in, c_out, dtype, grad, precision=None):
    """{TAP_COLUMNS, BLOCK_P, BLOCK_WN, BLOCK_WC, BLOCK_B} of a conv's weight gradient: its GEMM's K over
    pixels, N over its outputs (with fewer than a dot's 16, over the nine taps' outputs: TAP_COLUMNS), M over
    its input channels: 32, but 64 for half-precision tap columns (their gathered gradient costs more a step
    than the features: fewer steps; in fp32 the dot would take wgmma on sm_90, which reads the features
    K-major, 4 bytes at a time), and 16 for FMA dots; and the outputs a bias-gradient program sums."""
    tap_columns = c_out < 16
    fma = _fma_dots(dtype, precision)
    channels = 16 if fma else 64 if tap_columns and dtype != torch.float32 else 32
    return {
        "TAP_COLUMNS": tap_columns,
        "BLOCK_P": _pixel_step(dtype, grad, c_in, precision, tap_columns),
        "BLOCK_WN": _tile(9 * c_out if tap_columns else c_out, 16, 64 if tap_columns and not fma else 32),
        "BLOCK_WC": _tile(c_in, 16, channels),
        "BLOCK_B": _tile(c_out, 16, 32),
    }


def _weight_programs(splits, c_in, c_out, tiles):
    """Programs of a conv's weight gradient: per row of partials (a block's pixel split), its channel tiles x its
    column tiles (x 3 kernel rows without TAP_COLUMNS)."""
    if tiles["TAP_COLUMNS"]:
        return splits * triton.cdiv(c_in, tiles["BLOCK_WC"]) * triton.cdiv(9 * c_out, tiles["BLOCK_WN"])
    return splits * triton.cdiv(c_in, tiles["BLOCK_WC"]) * triton.cdiv(c_out, tiles["BLOCK_WN"]) * 3


def _packed_shape(c_in, growth, c_out, dtype):
    """(taps, rows, columns) of the packed weights: the buffer channels and the convs' outputs as far as any
    conv's tiles reach (forward: K over its input channels, N over its outputs; backward: N over the inputs,
    K over the outputs), so that the kernels load them without masks (the zeros cancel what they meet)."""
    x_end, _, _ = _buffer_layout(c_in, growth)
    rows = columns = 0
    for k in range(CONVS):
        inputs, outputs = x_end + k * growth, growth if k < CONVS - 1 else c_out  # conv 1 reads x's padding too
        forward, backward = _forward_tiles(inputs, outputs, dtype), _input_grad_tiles(inputs, outputs, dtype)
        rows = max(rows, _round_up(inputs, forward["BLOCK_K"]), _round_up(inputs, backward["BLOCK_N"]))
        reach = max(_round_up(outputs, forward["BLOCK_N"]), _round_up(outputs, backward["BLOCK_K"]))
        columns = max(columns, k * growth + reach)
    return 9, rows, columns


def _pack_launch(weights, dtype, channels_inner, x=None, features=None):
    """(the launch that packs the five convs' weights of each block, the packed tensor it fills): [block, tap,
    buffer channel, output of any conv] in `dtype`, the dot's (_packed_shape), with the channels or the outputs
    innermost in memory. Each dot takes it as its B operand with its K (the forward's channels, the backward's
    outputs) innermost: the layout TF32 wgmma reads (half-precision ones read either), 16 bytes at a time. With
    x (the forward), its programs also copy x into the feature buffer's first channels."""
    subnets = _subnets(weights)
    growth, c_in, c_out = weights[0].shape[0], weights[0].shape[1], weights[CONVS - 1].shape[0]
    x_end, _, _ = _buffer_layout(c_in, growth)
    taps, rows, columns = _packed_shape(c_in, growth, c_out, dtype)
    if channels_inner:
        packed = torch.empty(subnets, taps, columns, rows, dtype=dtype, device=weights[0].device).transpose(2, 3)
    else:
        packed = torch.empty(subnets, taps, rows, columns, dtype=dtype, device=weights[0].device)
    tile_columns = triton.next_power_of_2(max(growth, columns - 4 * growth))
    tile_rows = max(1, 4096 // tile_columns)  # a tile of 4,096 elements: 32 a thread, clear of spills
    pack_programs = CONVS * 9 * triton.cdiv(rows, tile_rows)  # a block's
    copying = x is not None
    if copying:
        b, _, h, w = x.shape
        strides = [*x.stride(), *features.stride()]
    else:  # no pixels to copy: pointers and sizes the kernel ignores
        x = features = packed
        b, h, w, strides = 0, 1, 1, [0] * 8
    args = [*(weight.contiguous() for weight in (*weights[:CONVS], *weights[-CONVS:])), packed, x, features]
    n_pixels = b // subnets * h * w  # a block's
    args += [c_in, x_end, growth, c_out, rows, columns, n_pixels, h, w, *_divisor(h), *_divisor(w)]
    args += [*packed.stride(), *strides]
    copy_programs = triton.cdiv(n_pixels, COPY_PIXELS)  # a block's

    def grid(meta):
        return pack_programs + copy_programs, subnets

    def work(meta):
        copy = {"_pack_tile": (0, 0), "_copy_tile": (triton.cdiv(x_end, COPY_CHANNELS.value), 0)}
        return [(subnets * pack_programs, {"_pixels": (0, 0), "_copy_tile": (0, 0)}), (subnets * copy_programs, copy)]

    constexprs = {"BLOCK_C": tile_rows, "BLOCK_COLS": tile_columns, "COPY_PIXELS": COPY_PIXELS if copying else 0}
    return Launch(_pack_kernel, grid, args, constexprs, work), packed


def _conv_launch(src, packed, c_out, biases, out, negative_slope, activation, tf32):
    """Conv of src's channels into out, with each block's packed weights from its first output column on and
    its bias (biases: one a block)."""
    subnets = len(biases)
    b, c_in, h, w = src.shape
    n_pixels = b // subnets * h * w  # a block's
    args = [src, packed, biases[0], biases[-1], out, n_pixels, h, w, *_divisor(h), *_divisor(w), c_in, c_out]
    args += [*src.stride(), *packed.stride(), *out.stride(), negative_slope]
    constexprs = {"ACTIVATION": activation, "PRECISION": _dot_precision(src.dtype, tf32), "SUBNETS": subnets}
    constexprs |= _forward_tiles(c_in, c_out, src.dtype)

    def grid(meta):
        return triton.cdiv(n_pixels, meta["BLOCK_M"]), triton.cdiv(c_out, meta["BLOCK_N"]), subnets

    def work(meta):
        k = constexprs["BLOCK_K"]
        conv = {"_conv3x3_kernel": (9 * triton.cdiv(c_in, k), meta["BLOCK_M"] * constexprs["BLOCK_N"] * k)}
        return [(math.prod(grid(meta)), conv)]

    key = (("forward", src.dtype, packed.dtype, c_in, c_out, *sorted(constexprs.items())), _pixel_bucket(n_pixels))
    return Launch(_conv3x3_kernel, grid, args, constexprs, work, key)


def _sample_span(t):
    """One past the largest offset, in elements, of one sample of t from its first element."""
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape[1:], t.stride()[1:], strict=True))


def _check_indexing(*tensors):
    """The kernels index flat pixels, and elements within a sample, in int32 (a sample's offset is int64)."""
    b, _, h, w = tensors[0].shape
    if b * h * w >= 2**31:
        raise ValueError(f"the dense-block kernels index pixels in int32: {b} x {h} x {w} = {b * h * w:,} pixels")
    for t in tensors:
        if _sample_span(t) >= 2**31:
            raise ValueError(f"the dense-block kernels index a sample in int32: {tuple(t.shape)} spans 2**31 elements")


def _forward_launches(x, weights, biases, negative_slope, out, features, tf32):
    _check_indexing(features, x, out)
    c_in, growth = x.shape[1], weights[0].shape[0]
    x_end, _, _ = _buffer_layout(c_in, growth)
    pack, packed = _pack_launch(weights, x.dtype, channels_inner=True, x=x, features=features)
    launches = [pack]
    for k in range(CONVS):
        reads = x_end + k * growth  # conv k + 1 reads the buffer's channels up to here (x's padding too)
        dst = features[:, reads : reads + growth] if k < CONVS - 1 else out
        launches.append(_conv_launch(features[:, :reads], packed[..., k * growth :], weights[k].shape[0],
                                     biases[k::CONVS], dst, negative_slope, k < CONVS - 1, tf32))  # fmt: skip
    return launches


def _backward_step_launch(
    grad, feat, c_x, x_end, tail_start, dz_out, packed, c_out, gbuf, dst, partials, slot, split_len, slope, tf32
):
    """One conv's backward step. feat: the buffer channels it read; grad: dout for conv 5, else its dZ
    (_dz_buffers); packed: each block's packed weights from its first output column on; dst: G, dx for conv 1,
    or None for no input gradient; tail_start: where the previous conv's output starts in feat, and dz_out: its
    dZ (None, None for conv 1); slot: the conv's (weight, bias) in a row of partials (_partials)."""
    subnets = packed.shape[0]
    b, c_in, h, w = feat.shape
    n_pixels = b // subnets * h * w  # a block's
    input_grad, last = dst is not None, c_in == gbuf.shape[1]  # conv 5 reads every channel
    dst = gbuf if dst is None else dst  # a pointer the kernel ignores without INPUT_GRAD
    dz_out = dst if dz_out is None else dz_out  # ignored without SLOPE_TAIL
    tail = c_in if tail_start is None else tail_start
    args = [grad, feat, packed, gbuf, dst, dz_out, partials, n_pixels, h, w]
    args += [*_divisor(h), *_divisor(w)]
    constexprs = {"C_OUT": c_out, "ACCUMULATE": not last, "SLOPE_TAIL": tail_start is not None}
    constexprs |= {"INPUT_GRAD": input_grad, "PRECISION": _dot_precision(feat.dtype, tf32)}
    constexprs |= _input_grad_tiles(c_in, c_out, feat.dtype, constexprs["PRECISION"])
    c = constexprs | _weight_grad_tiles(c_in, c_out, feat.dtype, grad, constexprs["PRECISION"])
    weight_programs = _weight_programs(partials.shape[0], c_in, c_out, c)
    bias_programs = partials.shape[0] * triton.cdiv(c_out, c["BLOCK_B"])
    args += [c_in, c_x, x_end, tail, partials.shape[0] // subnets, split_len, *slot, partials.stride(0)]
    args += [weight_programs, bias_programs]
    args += [*grad.stride(), *feat.stride(), *dst.stride(), *dz_out.stride(), *packed.stride(), slope]

    def input_programs(meta):
        return subnets * triton.cdiv(n_pixels, meta["BLOCK_M"]) * triton.cdiv(c_in, c["BLOCK_N"]) * input_grad

    def grid(meta):
        return (weight_programs + bias_programs + input_programs(meta),)

    def work(meta):
        input_loop = (9 * triton.cdiv(c_out, c["BLOCK_K"]), meta["BLOCK_M"] * c["BLOCK_N"] * c["BLOCK_K"])
        pixel_steps = triton.cdiv(split_len, c["BLOCK_P"])
        macs = c["BLOCK_WN"] * c["BLOCK_WC"] * c["BLOCK_P"] * (1 if c["TAP_COLUMNS"] else 3)
        weight_tile = "_weight_grad_taps_tile" if c["TAP_COLUMNS"] else "_weight_grad_row_tile"
        bias_loop = (triton.cdiv(split_len, BIAS_TILE.value // c["BLOCK_B"]), 0)
        groups = {weight_tile: (pixel_steps, macs), "_bias_grad_tile": bias_loop, "_input_grad_tile": input_loop}
        programs = {weight_tile: weight_programs, "_bias_grad_tile": bias_programs}
        programs["_input_grad_tile"] = input_programs(meta)
        return [(programs[f], {g: loop if g == f else (0, 0) for g, loop in groups.items()}) for f in groups]

    key = (("backward", feat.dtype, grad.dtype, c_in, subnets, *sorted(c.items())), _pixel_bucket(n_pixels))
    return Launch(_conv3x3_backward_kernel, grid, args, c, work, key)


def _backward_launches(grad, features, weights, negative_slope, gbuf, dx, partials, input_grad, tf32):
    c_in, growth = weights[0].shape[1], weights[0].shape[0]
    x_end, _, _ = _buffer_layout(c_in, growth)
    dz = _dz_buffers(gbuf, features, x_end, growth)
    _check_indexing(features, grad, gbuf, *dz[-2:], *([dx] if input_grad else []))
    slots, _ = _param_slots(weights[:CONVS])
    _, split_len = _pixel_splits(_block_pixels(features, weights))
    pack, packed = _pack_launch(weights, features.dtype, channels_inner=False)
    launches = [pack]
    for k in reversed(range(CONVS)):
        output_at = x_end + k * growth  # where conv k + 1's output sits: it reads the channels before (x's padding too)
        if k == CONVS - 1:  # conv 5 writes every channel of G: no zero fill
            step_grad, dst = grad, gbuf
        else:  # conv 1 writes dx itself, in x's dtype and layout, from what its successors left in G
            step_grad = dz[k]
            dst = gbuf if k else (dx if input_grad else None)
        tail_start = output_at - growth if k else None  # conv k's output, whose dZ this step completes
        dz_out = dz[k - 1] if k else None
        launches.append(_backward_step_launch(step_grad, features[:, :output_at], c_in, x_end,
                                              tail_start, dz_out, packed[..., k * growth :], weights[k].shape[0],
                                              gbuf, dst, partials, slots[k], split_len, negative_slope,
                                              tf32))  # fmt: skip
    return launches


def _partials(flat, features, weights):
    """The rows of weight-gradient partials, one a pixel split of a block (_split_of), each with a block's
    parameters in _param_slots order: the flat gradient itself (a row a block) when a block's pixels make a
    single split and it is fp32 (the kernels write the gradients in place)."""
    subnets, (splits, _) = _subnets(weights), _pixel_splits(_block_pixels(features, weights))
    if splits == 1 and flat.dtype == torch.float32:
        return flat.view(subnets, -1)
    return torch.empty(subnets * splits, flat.numel() // subnets, dtype=torch.float32, device=flat.device)


def block_launches(x, weights, biases, tf32):
    """(forward, backward, backward without dx): the launches of dense_blocks' calls on x (weights and biases:
    each block's five), on scratch buffers on x's device (what tune() times); the backwards read the output and
    features the forward writes."""
    x = torch.cat([x] * len(weights)) if len(weights) > 1 else x  # each block's copy, as dense_blocks makes it
    weights, biases = _flat(weights), _flat(biases)
    out, features = _forward_outputs(x, weights, biases)
    forward = _forward_launches(x, weights, biases, NEGATIVE_SLOPE, out, features, tf32)
    backward = [
        call_launches("irn::dense_block_backward", (out, features, weights, NEGATIVE_SLOPE, False, dx), tf32)
        for dx in (True, False)
    ]
    return forward, *backward


def tile_sizes(launches):
    """The pixels a tile of each launch that has a choice, under the config it takes."""
    return [launch_config(launch).kwargs["BLOCK_M"] for launch in launches if launch.key is not None]


def call_launches(op, args, tf32):
    """The launches of one call of `op` ("irn::dense_block" or "irn::dense_block_backward") on these arguments,
    as the op makes them; meta tensors will do (nothing is allocated on a device)."""
    if op == "irn::dense_block":
        x, weights, biases, negative_slope = args
        out, features = _forward_outputs(x, weights, biases)
        return _forward_launches(x, weights, biases, negative_slope, out, features, tf32)
    grad, features, weights, negative_slope, channels_last, input_grad = args
    dx, flat = _backward_outputs(features, weights, channels_last, input_grad)
    partials, gbuf = _partials(flat, features, weights), _gradient_buffer(features)
    return _backward_launches(grad, features, weights, negative_slope, gbuf, dx, partials, input_grad, tf32)


def _launch(launch, config):
    meta = launch.constexprs | config.kwargs
    launch.kernel[launch.grid](*launch.args, **meta, num_warps=config.num_warps, num_stages=config.num_stages)


def _run(launches):
    for launch in launches:
        _launch(launch, launch_config(launch))


# --- custom ops: opaque to torch.compile (no graph break), with autograd --------------------------


@torch.library.custom_op("irn::dense_block", mutates_args=())
def dense_block_forward(
    x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor], negative_slope: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block output, and the feature buffer [x, F_1..F_4] that the backward reads; for two blocks (ten
    weights and biases), the second's samples after the first's in both."""
    out, features = _forward_outputs(x, weights, biases)
    if out.numel():
        _run(_forward_launches(x, weights, biases, negative_slope, out, features, tf32_convolutions()))
    return out, features


@torch.library.custom_op("irn::dense_block_backward", mutates_args=())
def dense_block_backward(
    grad: torch.Tensor,
    features: torch.Tensor,
    weights: list[torch.Tensor],
    negative_slope: float,
    channels_last: bool,
    input_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """dx (empty unless input_grad), and the weight and bias gradients flat in _param_slots order."""
    dx, flat = _backward_outputs(features, weights, channels_last, input_grad)
    if features.numel() == 0:
        return dx, flat.zero_()
    partials, gbuf = _partials(flat, features, weights), _gradient_buffer(features)
    tf32 = tf32_convolutions()
    _run(_backward_launches(grad, features, weights, negative_slope, gbuf, dx, partials, input_grad, tf32))
    if partials.data_ptr() != flat.data_ptr():  # each block's splits summed in a fixed order: deterministic
        subnets = _subnets(weights)
        rows, sums = partials.view(subnets, -1, partials.shape[1]), flat.view(subnets, -1)
        if flat.dtype == torch.float32:
            torch.sum(rows, 1, out=sums)
        else:  # one launch more, the cast: of the sum, or of the single split as it is
            sums.copy_(rows.sum(1) if rows.shape[1] > 1 else rows[:, 0])
    return dx, flat


@dense_block_forward.register_fake
def _(x, weights, biases, negative_slope):
    return _forward_outputs(x, weights, biases)


@dense_block_backward.register_fake
def _(grad, features, weights, negative_slope, channels_last, input_grad):
    return _backward_outputs(features, weights, channels_last, input_grad)


def _save_for_backward(ctx, inputs, output):
    x, weights, _, ctx.negative_slope = inputs
    ctx.channels_last = _is_channels_last(x)
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1], *weights)


def _split_param_grads(flat, weights):
    """The flat gradient as views shaped like each conv's weight and bias."""
    slots, _ = _param_slots(weights)
    d_weights = [flat[w : w + weight.numel()].view(weight.shape) for (w, _), weight in zip(slots, weights, strict=True)]
    d_biases = [flat[b : b + weight.shape[0]] for (_, b), weight in zip(slots, weights, strict=True)]
    return d_weights, d_biases


def _dense_block_grads(ctx, grad, _features_grad):
    features, *weights = ctx.saved_tensors
    input_grad = ctx.needs_input_grad[0]
    dx, flat = dense_block_backward(grad, features, weights, ctx.negative_slope, ctx.channels_last, input_grad)
    d_weights, d_biases = _split_param_grads(flat, weights)
    return dx if input_grad else None, d_weights, d_biases, None


dense_block_forward.register_autograd(_dense_block_grads, setup_context=_save_for_backward)


def dense_block(x, weights, biases, negative_slope=NEGATIVE_SLOPE):
    """IRN's dense block on x, with the weights and biases of its five convs (engine.model.irn.DenseBlock's
    conv1..conv5). Under autocast it runs in the autocast dtype, as those convs would: x is cast once
    here and the weights inside the kernels; the weight gradients come back in the weights' dtype."""
    return dense_blocks(x, [weights], [biases], negative_slope)[0]


def dense_blocks(x, weights, biases, negative_slope=NEGATIVE_SLOPE):
    """The outputs of one or two dense blocks of the same shapes on the same x (a coupling's H and G), each
    block's five weights and biases a list in `weights` and `biases`, as dense_block computes them bit for bit:
    two blocks take the launches of one, each with both blocks' programs (twice the programs to fill a GPU
    with). Each block reads its own copy of x, made in the pass that casts x under autocast, so that autograd
    sums the two input gradients after casting them back, as it sums those of two calls."""
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    subnets = len(weights)
    x = x.to(dtype) if subnets == 1 else x.expand(subnets, *x.shape).to(dtype, copy=True).flatten(0, 1)
    out = dense_block_forward(x, _flat(weights), _flat(biases), negative_slope)[0]
    return out.chunk(subnets) if subnets > 1 else (out,)


def _flat(per_block):
    """The blocks' lists one after the other, as the ops take them."""
    return [t for block in per_block for t in block]


def _backward_launches_count(args):
    features, weights = args[1], args[2]
    splits, _ = _pixel_splits(_block_pixels(features, weights))
    return 1 + CONVS + (splits > 1) + (weights[0].dtype != torch.float32)  # + the partials' sum, + a cast


# Kernels per call, for a census of a step: the weights' packing, then one per conv forward; the packing,
# one per conv backward step, then the sum of the weight gradients' pixel splits when there are several,
# and a cast to non-fp32 weights (dense_block_backward's torch ops after its Triton launches: sum, copy_).
LAUNCHES = {"irn::dense_block": lambda args: 1 + CONVS, "irn::dense_block_backward": _backward_launches_count}


def _packing_traffic(weights, dtype):
    """Bytes the packing moves: every weight read, each block's packed weights (in `dtype`) written."""
    growth, c_in, c_out = weights[0].shape[0], weights[0].shape[1], weights[-1].shape[0]
    packed = _subnets(weights) * math.prod(_packed_shape(c_in, growth, c_out, dtype))
    return sum(w.numel() * w.element_size() for w in weights) + packed * dtype.itemsize


def _forward_traffic(args):
    """Bytes the forward's kernels read and write once each: the packing, x and its copy, then per conv of each
    block its channel prefix of the buffer and its packed weights, and its output slice (conv 5: the block
    output)."""
    x, weights = args[0], args[1]
    size = x.element_size()
    x_end, channels, _ = _buffer_layout(x.shape[1], weights[0].shape[0])
    moved = _packing_traffic(weights, x.dtype) + x.shape[0] * x.shape[2] * x.shape[3] * (x.shape[1] + x_end) * size
    pixels = x.shape[0] // _subnets(weights) * x.shape[2] * x.shape[3]  # a block's
    for k, w in enumerate(weights):
        prefix = x_end + k % CONVS * weights[0].shape[0]
        moved += pixels * (prefix + w.shape[0]) * size + w.numel() * size
    return moved


def _backward_traffic(args):
    """Bytes the backward's kernels read and write once each. Step k (conv 5 down to conv 1) reads its output's
    gradient (the op's grad, or its dZ in the features' dtype), its feature prefix (for the weight gradient) and
    its packed weights, writes the weight-gradient partials, and adds its input gradient to G's prefix: conv 5
    writes G without reading it, convs 4 to 2 read and write it, conv 1 reads G's x part (x_end channels, its
    padding too) and writes dx (when x needs a gradient); steps 5 to 2 write the prefix's last g channels as the
    previous conv's dZ, in the features' dtype. The packing comes first. Each block takes these steps."""
    grad, features, weights, input_grad = args[0], args[1], args[2], args[5]
    pixels, size = _block_pixels(features, weights), features.element_size()
    growth = weights[0].shape[0]
    x_end, _, _ = _buffer_layout(weights[0].shape[1], growth)
    splits, _ = _pixel_splits(pixels)
    moved = _packing_traffic(weights, features.dtype) + grad.numel() * grad.element_size()
    for i, w in enumerate(weights):
        k = i % CONVS
        prefix = x_end + k * growth
        g_passes = 1 if k == CONVS - 1 else 2 if k else int(input_grad)  # G's prefix: written, read+written, read
        moved += pixels * prefix * (size + 4 * g_passes) + w.numel() * (size + splits * 4)
        moved -= pixels * growth * (4 - size) if k else 0  # the previous conv's dZ, written in the features' dtype
        moved += pixels * w.shape[0] * size if k < CONVS - 1 else 0  # conv k+1's output gradient, its dZ
    return moved + (_subnets(weights) * pixels * weights[0].shape[1] * size if input_grad else 0)


TRAFFIC = {"irn::dense_block": _forward_traffic, "irn::dense_block_backward": _backward_traffic}


# --- FLOP counts: the five convs' counts, as FlopCounterMode counts aten.convolution(_backward) -----


def _conv_flops(batch, h, w, weight_shape):
    c_out, c_in, kh, kw = weight_shape
    return 2 * batch * h * w * c_out * c_in * kh * kw  # 2 FLOPs per multiply-add; biases not counted


@register_flop_formula(torch.ops.irn.dense_block)
def _dense_block_flops(x_shape, weight_shapes, bias_shapes, negative_slope, out_shape=None, **kwargs):
    b, _, h, w = x_shape
    return sum(_conv_flops(b // _subnets(weight_shapes), h, w, shape) for shape in weight_shapes)


@register_flop_formula(torch.ops.irn.dense_block_backward)
def _dense_block_backward_flops(
    grad_shape, features_shape, weight_shapes, negative_slope, channels_last, input_grad, out_shape=None, **kwargs
):
    # each conv's weight gradient, and its input gradient too, but conv 1's only when x needs one (each block
    # on its half of the samples)
    b, _, h, w = features_shape
    b //= _subnets(weight_shapes)
    weight_flops = sum(_conv_flops(b, h, w, shape) for shape in weight_shapes)
    input_shapes = [shape for k, shape in enumerate(weight_shapes) if input_grad or k % CONVS]
    return weight_flops + sum(_conv_flops(b, h, w, shape) for shape in input_shapes)


# --- ahead-of-time compilation ----------------------------------------------------------------------

# IRN's dense blocks, as (c_in, c_out, blocks a call): F maps C - 3 -> 3 channels, G and H (in one call) map
# 3 -> C - 3, with C = 12, 48, 192 after one, two and three Haar steps, and C = 27 after x3's space-to-depth
# by 3 (the parameter count of its 3 -> 24 blocks, 87,200, is 16-divisible: the JIT specialises their
# partial_stride, backward variants of their own).
IRN_BLOCKS = [(c - 3, 3, 1) for c in (12, 27, 48, 192)] + [(3, c - 3, 2) for c in (12, 27, 48, 192)]
# (features' dtype, parameters' dtype): under autocast the parameters stay fp32
_AOT_DTYPES = [
    (torch.float32, torch.float32),
    (torch.float16, torch.float16),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.float32),
]
_POINTER_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def aot_variants(blocks=IRN_BLOCKS, growth=32, attrs=False):
    """Every kernel variant the op launches for these (c_in, c_out, blocks a call), as (name, jit kernel, signature,
    constexprs) for triton.compiler.ASTSource: both kernels, every dtype, TF32 setting, constexpr variant
    and tile config. Compile them with default options (4 warps, 3 stages, as every config has).

    With attrs=True each entry gains a fifth element, ASTSource's attrs: the 16-divisibility the JIT finds
    at run time in 16-divisible ints and 16-byte aligned pointers (base allocations assumed aligned), so
    the compile is the one the GPU runs; without it, the compile assumes no alignment at all."""
    variants = {}
    for dtype, param_dtype in _AOT_DTYPES:
        for tf32 in (True, False) if dtype == torch.float32 else (False,):  # the dot precision of fp32 launches
            for c_in, c_out, subnets in blocks:
                for launch in _meta_launches(c_in, c_out, subnets, growth, dtype, param_dtype, tf32):
                    for config in launch_configs(launch):
                        variant = launch_variant(launch, config, aligned=attrs)
                        variants.setdefault(variant[0], variant if attrs else variant[:4])
    return list(variants.values())


def launch_configs(launch):
    """The configs a launch may take on a GPU, the first its default; one config for a kernel with no choice."""
    c = launch.constexprs
    if launch.kernel is _conv3x3_kernel:
        return _forward_configs(_FORWARD_CONFIGS, launch.args[0].dtype, c["PRECISION"])
    if launch.kernel is _conv3x3_backward_kernel:
        return _backward_configs(_BACKWARD_CONFIGS, launch.args[1].dtype, c["PRECISION"])
    return [triton.Config({}, num_warps=4, num_stages=3)]


def launch_variant(launch, config, aligned=True):
    """(name, jit function, signature, constexprs, attrs) of a launch under a tile config, as
    triton.compiler.ASTSource takes them, the name spelling out every specialisation. attrs: with `aligned`,
    the 16-divisibility the JIT finds in ints and pointers (base allocations assumed aligned), so that the
    compile is the one the GPU runs; without, none (a compile that assumes no alignment at all)."""
    fn = launch.kernel
    signature, constants, divisible = _signature(fn, launch.args, launch.constexprs | config.kwargs)
    divisible = divisible if aligned else []
    attrs = {(fn.arg_names.index(arg),): [["tt.divisibility", 16]] for arg in divisible}
    return _variant_name(fn, signature, constants, divisible), fn, signature, constants, attrs


def _meta_launches(c_in, c_out, subnets, growth, dtype, param_dtype, tf32, batch=2, size=36):
    """The launches of one forward and of the backward with and without dx of `subnets` blocks in a call, on
    meta tensors."""
    x = torch.empty(batch, c_in, size, size, dtype=dtype, device="meta")
    shapes = [(growth if k < CONVS - 1 else c_out, c_in + k * growth, 3, 3) for k in range(CONVS)]
    weights = [torch.empty(shape, dtype=param_dtype, device="meta") for shape in shapes]
    biases = [torch.empty(shape[0], dtype=param_dtype, device="meta") for shape in shapes]
    forward, backward, no_dx = block_launches(x, [weights] * subnets, [biases] * subnets, tf32)
    return forward + backward + no_dx


def _signature(fn, args, constexprs):
    """Signature, constants and 16-aligned arguments as the JIT specialises these arguments: pointer types
    from the tensors' dtypes, ints equal to 1 (unit strides) folded into constants, but UNSPECIALISED's."""
    signature, constants, aligned = {}, dict(constexprs), []
    for name, arg in zip(fn.arg_names[: len(args)], args, strict=True):  # the constexprs come last
        if isinstance(arg, torch.Tensor):
            signature[name] = _POINTER_TYPES[arg.dtype]
            if arg.storage_offset() * arg.element_size() % 16 == 0:
                aligned.append(name)
        elif isinstance(arg, float):
            signature[name] = "fp32"
        elif name in UNSPECIALISED:
            signature[name] = "i32"
        elif arg == 1:
            signature[name], constants[name] = "constexpr", 1
        else:
            signature[name] = "i32" if -(2**31) <= arg < 2**31 else "i64"
            if arg % 16 == 0:
                aligned.append(name)
    signature |= {name: "constexpr" for name in constexprs}
    return signature, constants, aligned


def _variant_name(fn, signature, constants, aligned):
    pointers = "_".join(f"{name}-{kind[1:]}" for name, kind in signature.items() if kind.startswith("*"))
    flags = "_".join(f"{name}-{value}" for name, value in sorted(constants.items()) if name.isupper())
    units = "_".join(sorted(name for name, value in constants.items() if not name.isupper()))
    return f"{fn.__name__}_{flags}_{pointers}_units-{units}" + (f"_aligned-{'_'.join(aligned)}" if aligned else "")
