"""Super-resolution metrics with the paper's conventions: 8-bit images, Y channel (BT.601), border cropped.

Inputs are float (B,3,H,W) tensors in [0, 1] on any device; results are per-image tensors.
"""

import torch
import torch.nn.functional as F


def to_uint8_levels(x):
    """Round to the 8-bit grid, as saving a PNG would (values 0..255 as float)."""
    return torch.round(x.clamp(0, 1) * 255)


def rgb_to_y(x255):
    """Y of YCbCr from RGB in 0..255, as MATLAB's rgb2ycbcr (BT.601, studio range 16..235)."""
    r, g, b = x255.unbind(1)
    return (16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0).unsqueeze(1)


def crop_border(x, border):
    return x[..., border:-border, border:-border] if border > 0 else x


def prepare(img, border, y_channel):
    x = to_uint8_levels(img.double())
    return crop_border(rgb_to_y(x) if y_channel else x, border)


def psnr(img, ref, border=0, y_channel=True):
    a, b = prepare(img, border, y_channel), prepare(ref, border, y_channel)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse)


SSIM_WINDOW = 11


def smallest_side(scale):
    """The smallest image side that can be scored: an SSIM window left after cropping `scale` pixels at
    each border."""
    return 2 * scale + SSIM_WINDOW


def gaussian_window(size=SSIM_WINDOW, sigma=1.5, dtype=torch.float64, device=None):
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(img, ref, border=0, y_channel=True):
    """SSIM with an 11x11 Gaussian window (sigma 1.5), valid region only, on 0..255 data."""
    a, b = prepare(img, border, y_channel), prepare(ref, border, y_channel)
    c = a.shape[1]
    w = gaussian_window(dtype=a.dtype, device=a.device).expand(c, 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(t):
        return F.conv2d(t, w, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)
