"""engine.data.imresize against a slow, written-out restatement of MATLAB's imresize, and against torch's bicubic."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from engine.data.imresize import LR_REACH, axis_tables, imresize

# ---------------------------------------------------------------------------------------------------------------
# Reference: MATLAB's imresize (bicubic, antialiasing on) restated scalar by scalar, in MATLAB's 1-based terms.
# Deliberately naive: no tables shared with the module, no zero-tap removal, explicit loops over every output
# pixel, channel and tap, float64 throughout. Written from MATLAB's documented algorithm (cubic, contributions,
# the widened kernel h(x) = scale * cubic(scale * x) for scale < 1, indices folded through [1:n, n:-1:1]).
# ---------------------------------------------------------------------------------------------------------------


def ref_cubic(x):
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def ref_contributions(in_length, out_length, scale):
    """For each output pixel (1-based), its list of (1-based input index, weight), MATLAB style."""
    kernel_width = 4.0
    if scale < 1:
        kernel_width = kernel_width / scale
    aux = list(range(1, in_length + 1)) + list(range(in_length, 0, -1))
    result = []
    for x in range(1, out_length + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - kernel_width / 2)
        taps = []
        for p in range(math.ceil(kernel_width) + 2):
            index = left + p
            if scale < 1:
                w = scale * ref_cubic(scale * (u - index))
            else:
                w = ref_cubic(u - index)
            taps.append([aux[(index - 1) % len(aux)], w])
        total = sum(w for _, w in taps)
        result.append([(i, w / total) for i, w in taps])
    return result


def ref_imresize(img, factor):
    """imresize(img, 1/factor): rows first, then columns (MATLAB's order when both scales are equal)."""
    img = np.asarray(img, dtype=np.float64)
    scale = 1 / factor
    in_h, in_w, channels = img.shape
    out_h, out_w = math.ceil(scale * in_h), math.ceil(scale * in_w)
    rows = ref_contributions(in_h, out_h, scale)
    cols = ref_contributions(in_w, out_w, scale)
    mid = np.zeros((out_h, in_w, channels))
    for r in range(out_h):
        for c in range(in_w):
            for ch in range(channels):
                acc = 0.0
                for i, w in rows[r]:
                    acc += w * img[i - 1, c, ch]
                mid[r, c, ch] = acc
    out = np.zeros((out_h, out_w, channels))
    for r in range(out_h):
        for c in range(out_w):
            for ch in range(channels):
                acc = 0.0
                for i, w in cols[c]:
                    acc += w * mid[r, i - 1, ch]
                out[r, c, ch] = acc
    return out


def noisy_image(h, w, seed=0, channels=3):
    """Smooth colours plus strong noise, uint8: exercises every tap, including the mirrored ones."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(5 * x + 1), np.cos(4 * y), np.sin(3 * (x + y))], -1)[..., :channels]
    img = 0.5 + 0.3 * base + 0.2 * rng.standard_normal((h, w, channels))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def torch_aa_bicubic(img_float, factor):
    x = torch.from_numpy(np.ascontiguousarray(img_float.transpose(2, 0, 1)))[None].float()
    y = F.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------------------------------------------
# (1) Against the reference
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "h, w, factor",
    [(24, 32, 2), (29, 37, 2), (31, 44, 3), (27, 27, 3), (41, 23, 4), (36, 52, 4), (7, 5, 4), (19, 26, 8)],
)
def test_matches_matlab_reference_on_uint8(h, w, factor):
    img = noisy_image(h, w, seed=h * w)
    got = imresize(img, factor)
    want = ref_imresize(img / 255.0, factor)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_matches_matlab_reference_on_float64_with_values_outside_0_1():
    img = np.random.default_rng(1).normal(0, 2, (17, 30, 3))
    got = imresize(img, 3)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, ref_imresize(img, 3), rtol=0, atol=1e-12)


def test_taps_are_matlab_s_after_dropping_all_zero_columns():
    # ceil(4 s) + 2 candidate taps; the two extra ones (and, at x3, the zero crossings of the stretched kernel
    # at distances +-3, where cubic(1) = 0) carry no weight in any row and are removed.
    assert [axis_tables(100, s)[0].shape[1] for s in (2, 3, 4, 8)] == [8, 9, 16, 32]
    weights, indices = axis_tables(13, 4)
    np.testing.assert_allclose(weights.sum(axis=1), 1, atol=1e-15)
    assert indices.min() >= 0 and indices.max() <= 12
    # Symmetric padding repeats the edge pixel: the first output's leftmost taps read rows 5, 4, .., 0, 0, 1, ..
    assert indices[0].tolist() == [5, 4, 3, 2, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]


# ---------------------------------------------------------------------------------------------------------------
# (2) Against torch's antialiased bicubic: same kernel and centres, different border handling
# ---------------------------------------------------------------------------------------------------------------


def border_and_interior(diff, reach):
    interior = diff[reach:-reach, reach:-reach]
    frame = diff.copy()
    frame[reach:-reach, reach:-reach] = 0
    return interior, frame


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_equals_torch_antialiased_bicubic_inside_and_differs_at_the_border(factor):
    img = noisy_image(72, 96, seed=factor) / np.float32(255)
    diff = np.abs(imresize(img, factor) - torch_aa_bicubic(img, factor)).max(axis=2)
    interior, frame = border_and_interior(diff, LR_REACH)
    assert interior.max() < 1e-5
    # The difference reaches exactly LR_REACH pixels deep: the outermost ring and the next one both differ.
    assert frame[0].max() > 1e-2 and frame[:, 0].max() > 1e-2
    assert diff[1, LR_REACH:-LR_REACH].max() > 1e-4 and diff[LR_REACH:-LR_REACH, -2].max() > 1e-4


def test_real_photograph_differs_from_torch_only_at_the_border():
    img = skdata.astronaut()
    diff = np.abs(imresize(img, 4) - torch_aa_bicubic(img / np.float32(255), 4)).max(axis=2)
    interior, frame = border_and_interior(diff, LR_REACH)
    assert interior.max() < 1e-5
    assert frame.max() > 0.5 / 255  # more than half an 8-bit level somewhere along the border


# ---------------------------------------------------------------------------------------------------------------
# (3) Invariants: constants, linear ramps
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("h, w", [(32, 48), (37, 21), (3, 5)])
def test_constant_image_stays_constant(factor, h, w):
    img = np.full((h, w, 3), 173, np.uint8)
    out = imresize(img, factor)
    assert out.shape == (math.ceil(h / factor), math.ceil(w / factor), 3)
    np.testing.assert_allclose(out, 173 / 255, rtol=0, atol=1e-6)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_linear_ramp_is_sampled_at_the_lr_pixel_centres_inside(factor):
    # Bicubic reproduces linear functions, so away from the border the LR pixel k takes the ramp's value at
    # HR coordinate s k + (s - 1) / 2 (0-based): the centre of the s HR pixels it covers.
    h, w = 12 * factor, 10 * factor
    i, j = np.mgrid[0:h, 0:w].astype(np.float64)
    img = (0.01 * i - 0.02 * j + 0.5)[..., None]
    out = imresize(img, factor)[..., 0]
    k, m = np.mgrid[0 : h // factor, 0 : w // factor] * factor + (factor - 1) / 2
    want = 0.01 * k - 0.02 * m + 0.5
    r = LR_REACH
    np.testing.assert_allclose(out[r:-r, r:-r], want[r:-r, r:-r], rtol=0, atol=1e-12)
    assert np.abs(out - want).max() > 1e-4  # the mirror bends the ramp at the border


# ---------------------------------------------------------------------------------------------------------------
# (4) Shapes and types
# ---------------------------------------------------------------------------------------------------------------


def test_output_size_is_matlab_s_ceil_of_scale_times_size():
    # MATLAB (and the official imresize_np) size the output as ceil(in * (1 / s)).
    for factor in range(1, 9):
        for n in range(1, 60):
            assert axis_tables(n, factor)[0].shape[0] == math.ceil(n * (1 / factor))
    assert imresize(np.zeros((37, 50, 3), np.uint8), 4).shape == (10, 13, 3)
    assert imresize(np.zeros((1356, 2040, 3), np.uint8)[:, :9], 2).shape == (678, 5, 3)


def test_grey_images_and_dtypes():
    grey = noisy_image(20, 30, channels=1)[..., 0]
    out = imresize(grey, 2)
    assert out.shape == (10, 15) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref_imresize(grey[..., None] / 255.0, 2)[..., 0], rtol=0, atol=1e-6)
    assert imresize(grey.astype(np.float16), 2).dtype == np.float32
    np.testing.assert_array_equal(imresize(grey, 1), grey / np.float32(255))


@pytest.mark.parametrize("factor", [0, -2, 2.0, 0.5, True])
def test_non_integer_or_non_positive_factors_are_refused(factor):
    with pytest.raises(ValueError, match="positive integer"):
        imresize(np.zeros((8, 8, 3), np.uint8), factor)


def test_integer_images_other_than_uint8_are_refused():
    with pytest.raises(TypeError, match="uint8 or float"):
        imresize(np.zeros((8, 8, 3), np.int16), 2)
