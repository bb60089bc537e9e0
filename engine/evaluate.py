"""Evaluation with the paper's conventions: HR -> downscale -> 8-bit LR -> upscale, PSNR/SSIM on Y."""
import torch

from engine import metrics
from engine.data import bicubic_down, image_tensor


@torch.no_grad()
def evaluate_images(model, images, temperature=1.0, seed=0, device="cpu"):
    """Per-image metrics for full images (cropped to multiples of the scale); z ~ N(0, T^2), seeded."""
    was_training = model.training
    model.eval()
    scale, rows = model.scale, []
    generator = torch.Generator(device=device).manual_seed(seed)
    for img in images:
        hr = image_tensor(img, scale).to(device)
        lr, _ = model.downscale(hr)
        sr = model.upscale(lr, temperature=temperature, generator=generator)
        rows.append(
            {
                "psnr_y": metrics.psnr(sr, hr, scale).item(),
                "ssim_y": metrics.ssim(sr, hr, scale).item(),
                "psnr_rgb": metrics.psnr(sr, hr, scale, y_channel=False).item(),
                "lr_psnr_y": metrics.psnr(lr, bicubic_down(hr, scale)).item(),
            }
        )
    model.train(was_training)
    return rows


def mean_rows(rows):
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}
