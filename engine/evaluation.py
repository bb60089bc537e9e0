"""The evaluation pass with the paper's conventions: HR -> downscale -> 8-bit LR -> upscale, PSNR/SSIM on Y.

Images are cropped to multiples of the scale; metrics crop `scale` border pixels (BasicSR's crop_border)
on the Y channel of 8-bit images (engine/metrics.py). Sampled z is seeded per (sample, image), so K
samples give a mean and a standard deviation over samples.
"""

import statistics

import torch

from engine import data, metrics


def z_settings(z, temperatures, samples):
    """[(label, temperature, seeds)]: the columns of an evaluation (z = 0 has a single seed)."""
    if z == "zero":
        return [("z=0", 0.0, [0])]
    return [("z=0" if t == 0 else f"T={t:g}", t, [0] if t == 0 else list(range(samples))) for t in temperatures]


@torch.no_grad()
def evaluate_set(model, images, settings, device, on_image=None):
    """Per setting, the mean metrics of each seed over the images; plus the LR's PSNR against bicubic.

    `on_image(index, hr, lr, {label: upscale of seed 0})` sees every image's results (grids, files).
    """
    was_training = model.training
    model.eval()
    scale = model.scale
    per_seed = {label: {seed: [] for seed in seeds} for label, _, seeds in settings}
    lr_psnr = []
    for i, img in enumerate(images):
        hr = data.image_tensor(img, scale).to(device)
        lr, _ = model.downscale(hr)
        lr_psnr.append(metrics.psnr(lr, data.bicubic_down(hr, scale)).item())
        first = {}
        for label, temperature, seeds in settings:
            for seed in seeds:
                generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
                sr = model.upscale(lr, temperature=temperature, generator=generator)
                per_seed[label][seed].append(image_scores(sr, hr, scale))
                first.setdefault(label, sr)
        if on_image:
            on_image(i, hr, lr, first)
    model.train(was_training)
    settings_summary = {label: summarise(seeds) for label, seeds in per_seed.items()}
    return {"lr_psnr_y": statistics.fmean(lr_psnr) if lr_psnr else None, "settings": settings_summary}


def image_scores(sr, hr, scale):
    return {
        "psnr_y": metrics.psnr(sr, hr, scale).item(),
        "ssim_y": metrics.ssim(sr, hr, scale).item(),
        "psnr_rgb": metrics.psnr(sr, hr, scale, y_channel=False).item(),
    }


def summarise(seeds):
    """Mean over images per seed, then mean and std over seeds."""
    means = [{k: statistics.fmean(r[k] for r in rows) for k in rows[0]} for rows in seeds.values() if rows]
    out = {}
    for key in ("psnr_y", "ssim_y", "psnr_rgb"):
        values = [m[key] for m in means]
        out[key] = statistics.fmean(values) if values else None
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    out["samples"] = len(means)
    return out


def validation_scores(model, images, device="cpu", on_image=None):
    """The trainer's validation: metrics with sampled z (T = 1, seed 0), means over the images;
    `on_image` also sees the z = 0 upscale."""
    result = evaluate_set(model, images, z_settings("sample", [0.0, 1.0], 1), device, on_image)
    row = result["settings"]["T=1"]
    return {
        "psnr_y": row["psnr_y"],
        "ssim_y": row["ssim_y"],
        "psnr_rgb": row["psnr_rgb"],
        "lr_psnr_y": result["lr_psnr_y"],
    }
