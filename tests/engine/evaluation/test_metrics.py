import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from engine.evaluation import metrics


def test_y_channel_of_known_colours_matches_matlab_rgb2ycbcr():
    colours = torch.tensor([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.float64)
    y = metrics.rgb_to_y(colours.T.reshape(1, 3, 5, 1)).flatten()
    assert y.tolist() == pytest.approx([235.0, 16.0, 16 + 65.481, 16 + 128.553, 16 + 24.966])


def images(seed=0, shape=(1, 3, 40, 48)):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(shape, generator=g)
    noisy = (ref + 0.05 * torch.randn(shape, generator=g)).clamp(0, 1)
    return noisy, ref


def y_numpy(x):
    return metrics.rgb_to_y(metrics.to_uint8_levels(x.double()))[0, 0].numpy()


def test_psnr_by_hand_and_against_scikit_image():
    ref = torch.full((1, 3, 8, 8), 100 / 255)
    off = ref + 1 / 255  # every level one higher: MSE 1 on RGB
    assert metrics.psnr(off, ref, y_channel=False).item() == pytest.approx(10 * np.log10(255**2))
    noisy, ref = images()
    expected = peak_signal_noise_ratio(y_numpy(ref)[4:-4, 4:-4], y_numpy(noisy)[4:-4, 4:-4], data_range=255)
    assert metrics.psnr(noisy, ref, border=4).item() == pytest.approx(expected, abs=1e-9)


def test_ssim_against_scikit_image_with_the_same_window():
    noisy, ref = images(1)
    expected = structural_similarity(
        y_numpy(ref)[2:-2, 2:-2],
        y_numpy(noisy)[2:-2, 2:-2],
        data_range=255,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        win_size=11,
    )
    assert metrics.ssim(noisy, ref, border=2).item() == pytest.approx(expected, abs=1e-6)
    assert metrics.ssim(ref, ref).item() == pytest.approx(1.0)


def test_metrics_are_batched_per_image():
    a, b = images(2, (3, 3, 24, 24))
    assert metrics.psnr(a, b).shape == (3,) and metrics.ssim(a, b).shape == (3,)
    assert metrics.psnr(a, b)[1].item() == pytest.approx(metrics.psnr(a[1:2], b[1:2]).item())
