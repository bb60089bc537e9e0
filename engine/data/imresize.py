"""MATLAB-compatible ``imresize`` for downscaling by an integer factor: the official IRN LR reference.

The official IRN pipeline makes the training LR of each image with MATLAB's ``imresize(img, 1/s, 'bicubic')``
(antialiasing on) of the WHOLE HR image, on float images in [0, 1], and neither rounds nor clips the result.
This module computes the same thing with numpy, vectorised over pixels.

The math, per axis (the resize is separable: rows first, then columns, as MATLAB does for equal scales)
----------------------------------------------------------------------------------------------------
Input length ``n``, integer factor ``s``, output length ``m = ceil(n / s)`` (MATLAB: ``ceil(scale * n)`` with
``scale = 1/s``). With 1-based coordinates, as in MATLAB's ``contributions()``:

- Bicubic kernel (Keys, a = -0.5)::

      k(x) = 1.5|x|^3 - 2.5|x|^2 + 1             for |x| <= 1
           = -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2     for 1 < |x| <= 2
           = 0                                   otherwise

- Antialiasing stretches the kernel by ``s`` when downscaling: ``h(x) = k(x / s) / s``, whose support, the
  kernel width, grows from 4 to ``4 s`` input pixels.
- Output pixel ``j`` (1..m) is centred on the input coordinate ``u_j = s j + (1 - s) / 2`` (pixel centres at
  integers, so the LR pixel covers exactly its ``s`` HR pixels).
- It takes ``P = ceil(4 s) + 2`` taps starting at ``left_j = floor(u_j - 2 s)``: MATLAB's two extra taps
  guard against rounding at the window's ends; taps whose weight is zero in every row are dropped afterwards
  (for an even ``s`` that leaves ``4 s`` taps, e.g. 16 at x4; at x3, where the stretched kernel is zero at
  distances of +-3, 9).
- Weights ``w_jt = h(u_j - i_jt)``, then divided by their row sum (so a constant stays constant).
- Indices outside 1..n are mirrored with the edge pixel repeated ("symmetric" padding):
  ``0 -> 1, -1 -> 2, n+1 -> n, ...``, periodically with period ``2 n`` (MATLAB's ``aux = [1:n, n:-1:1]``), so
  even an image smaller than the kernel is handled.
- The axis is resized as ``out[j] = sum_t w[j, t] * img[i[j, t]]``.

Because the border is handled by mirroring, not by renormalising the kernel, the LR of a crop differs from the
crop of the LR along the crop's edges (about 2 LR pixels deep): torch's ``F.interpolate(..., mode="bicubic",
antialias=True)`` uses the same kernel and centres, and agrees with this module everywhere except within 2 LR
pixels of the image border, where it renormalises the truncated kernel instead.

Numbers: uint8 input is divided by 255 and computed in float32 (the official code reads images as float32 in
[0, 1]); float32 and float64 inputs are computed and returned in their own precision (other floats in
float32). The result is neither rounded nor clipped: the kernel's negative lobes can take it slightly outside
the input's range near sharp edges, and the official LR reference keeps those values. The weight tables are
computed in float64 (as MATLAB does) and cast to the working precision.
"""

import math

import numpy as np

KERNEL_WIDTH = 4.0  # the bicubic kernel's support at scale 1, in input pixels
LR_REACH = 2  # LR pixels next to an image border whose values depend on the border handling


def cubic(x):
    """Keys' bicubic kernel with a = -0.5 (MATLAB's ``cubic``), elementwise on a float64 array."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return inner + outer


def output_length(in_length, scale):
    """MATLAB's ``ceil(in_length * (1 / scale))``, in exact integer arithmetic."""
    return -(-in_length // scale)


def mirror_indices(indices, in_length):
    """Map 0-based indices onto 0..in_length-1 by symmetric reflection (edge repeated), as MATLAB's ``aux``."""
    period = 2 * in_length
    folded = np.mod(indices, period)
    return np.where(folded < in_length, folded, period - 1 - folded)


def axis_tables(in_length, scale):
    """Weight and index tables of one axis: ``out[j] = sum_t weights[j, t] * x[indices[j, t]]``.

    ``weights`` is float64 of shape (m, taps), each row summing to 1; ``indices`` is int64, 0-based, already
    mirrored into 0..in_length-1. ``scale`` is the integer downscaling factor (1 gives the identity).
    """
    check_scale(scale)
    m = output_length(in_length, scale)
    # Antialiasing widens the kernel by the factor only when downscaling (MATLAB: scale < 1).
    width = KERNEL_WIDTH * scale
    centres = np.arange(1, m + 1, dtype=np.float64) * scale + 0.5 * (1 - scale)  # 1-based input coordinates
    left = np.floor(centres - width / 2)
    taps = math.ceil(width) + 2
    indices = left[:, None] + np.arange(taps)[None, :]  # 1-based, may fall outside 1..in_length
    weights = cubic((centres[:, None] - indices) / scale) / scale
    # For an integer s the stretched kernel's samples already sum to 1 (partition of unity); dividing, as MATLAB
    # does, only removes rounding so that a constant image stays constant to the last bit or two.
    weights /= weights.sum(axis=1, keepdims=True)
    # Drop taps that are zero in every row (MATLAB's ``kill``): they only cost time.
    used = np.any(weights != 0, axis=0)
    weights, indices = weights[:, used], indices[:, used]
    return weights, mirror_indices(indices.astype(np.int64) - 1, in_length)


def check_scale(scale):
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"imresize downscales by a positive integer factor, got {scale!r}")


def working_image(img):
    """The image as a float array to compute on: uint8 becomes float32 in [0, 1] (the official ``read_img``)."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img.astype(np.float32) / np.float32(255)
    if img.dtype in (np.float32, np.float64):
        return img
    if np.issubdtype(img.dtype, np.floating):
        return img.astype(np.float32)
    raise TypeError(f"imresize takes uint8 or float images, got {img.dtype}")


def resize_axis(x, weights, indices, axis):
    """Apply one axis' tables along ``axis`` of ``x``: one gather and one multiply-add per tap.

    The loop runs over the taps (about 4 s of them), never over pixels, and adds each tap's term into the
    output in place.
    """
    weights = weights.astype(x.dtype)
    shape = [1] * x.ndim
    shape[axis] = weights.shape[0]
    out = None
    for t in range(weights.shape[1]):
        term = np.take(x, indices[:, t], axis=axis) * weights[:, t].reshape(shape)
        out = term if out is None else np.add(out, term, out=out)
    return out


def imresize(img, scale):
    """MATLAB ``imresize(img, 1/scale, 'bicubic')`` (antialiased) of an HxW or HxWxC image.

    Returns float (float32 for uint8 input, scaled to [0, 1]) of shape (ceil(H/scale), ceil(W/scale)[, C]),
    unrounded and unclipped, as the official IRN LR reference.
    """
    x = working_image(img)
    weights_h, indices_h = axis_tables(x.shape[0], scale)
    weights_w, indices_w = axis_tables(x.shape[1], scale)
    return resize_axis(resize_axis(x, weights_h, indices_h, 0), weights_w, indices_w, 1)
