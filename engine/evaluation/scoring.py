"""The evaluation pass with the paper's conventions: HR -> downscale -> 8-bit LR -> upscale, PSNR/SSIM on Y.

Images are cropped to multiples of the scale; metrics crop `scale` border pixels (BasicSR's crop_border)
on the Y channel of 8-bit images (engine/evaluation/metrics.py). Sampled z is seeded per (sample, image), so K
samples give a mean and a standard deviation over samples, and an image's result does not depend on
which images are scored beside it (ranks can share a validation set).
"""

import statistics

import torch

from engine.data import tensors
from engine.evaluation import metrics

SCORES = ("psnr_y", "ssim_y", "psnr_rgb")


def z_settings(z, temperatures, samples):
    """[(label, temperature, seeds)]: the columns of an evaluation (z = 0 has a single seed)."""
    if z == "zero":
        return [("z=0", 0.0, [0])]
    return [("z=0" if t == 0 else f"T={t:g}", t, [0] if t == 0 else list(range(samples))) for t in temperatures]


VALIDATION = z_settings("sample", [0.0, 1.0], 1)  # the trainer's: z = 0 for the grid, T = 1 for the scores


@torch.no_grad()
def score_images(model, images, settings, device, on_image=None, indices=None):
    """Per image: its LR's PSNR-Y against the bicubic reference and, per setting, the scores of each seed's
    upscale.

    `indices` are the images' places in their set (default 0, 1, ...): they seed z. `on_image(index, hr,
    lr, {label: upscale of the first seed})` sees every image's results (grids, files).
    """
    was_training = model.training
    model.eval()
    rows = []
    for i, img in zip(indices or range(len(images)), images, strict=True):
        hr = tensors.image_tensor(img, model.scale).to(device)
        lr, _ = model.downscale(hr)
        reference = tensors.lr_reference(img, model.scale).to(device)
        scores, first = upscale_scores(model, lr, hr, settings, i)
        rows.append({"lr_psnr_y": metrics.psnr(lr, reference).item(), **scores})
        if on_image:
            on_image(i, hr, lr, first)
    model.train(was_training)
    return rows


def upscale_scores(model, lr, hr, settings, index):
    """({label: the scores of each seed's upscale of lr}, {label: the first seed's upscale}) of the image at
    `index` of its set, which seeds its z."""
    scores, first = {}, {}
    for label, temperature, seeds in settings:
        scores[label] = []
        for seed in seeds:
            generator = torch.Generator(device=lr.device).manual_seed(seed * 1_000_003 + index)
            sr = model.upscale(lr, temperature=temperature, generator=generator)
            scores[label].append(image_scores(sr, hr, model.scale))
            first.setdefault(label, sr)
    return scores, first


def image_scores(sr, hr, scale):
    return {
        "psnr_y": metrics.psnr(sr, hr, scale).item(),
        "ssim_y": metrics.ssim(sr, hr, scale).item(),
        "psnr_rgb": metrics.psnr(sr, hr, scale, y_channel=False).item(),
    }


def summarise(rows, settings):
    """Per setting: the mean over images of each seed, then mean and std over seeds; the LR's mean PSNR-Y."""
    lr_psnr = statistics.fmean(r["lr_psnr_y"] for r in rows) if rows else None
    return {"lr_psnr_y": lr_psnr, "settings": summarise_settings(rows, settings)}


def summarise_settings(rows, settings):
    """{label: mean and std over seeds of the mean over images} of rows holding each setting's scores."""
    out = {}
    for label, _, seeds in settings:
        seeds_scored = range(len(seeds)) if rows else ()  # no image scored: no mean to take
        means = [{k: statistics.fmean(r[label][s][k] for r in rows) for k in SCORES} for s in seeds_scored]
        summary = {"samples": len(means)}
        for key in SCORES:
            values = [m[key] for m in means]
            summary[key] = statistics.fmean(values) if values else None
            summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out[label] = summary
    return out


def evaluate_set(model, images, settings, device, on_image=None):
    """Score every image of a set and summarise (engine.evaluate's table)."""
    return summarise(score_images(model, images, settings, device, on_image), settings)
