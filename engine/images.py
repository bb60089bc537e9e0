"""Saving images: 8-bit PNGs and side-by-side grids of (B,3,H,W) tensors in [0, 1]."""
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image, ImageDraw


def to_uint8(img):
    """(3,H,W) or (1,3,H,W) float in [0, 1] -> HxWx3 uint8."""
    img = img.detach().float().cpu().squeeze(0).clamp(0, 1)
    return np.round(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def save_png(img, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(img)).save(path)


def save_grid(images, labels, path, gap=4):
    """Images side by side, each upscaled (nearest) to the tallest one's size, with a caption above each."""
    h = max(img.shape[-2] for img in images)
    w = max(img.shape[-1] for img in images)
    caption = 14
    # Grey, so that an all-white (saturated error) or all-black tile still shows its edges.
    canvas = Image.new("RGB", (len(images) * (w + gap) - gap, h + caption), (96, 96, 96))
    draw = ImageDraw.Draw(canvas)
    for i, (img, label) in enumerate(zip(images, labels)):
        tile = F.interpolate(img[None] if img.dim() == 3 else img, size=(h, w), mode="nearest")
        canvas.paste(Image.fromarray(to_uint8(tile)), (i * (w + gap), caption))
        draw.text((i * (w + gap) + 2, 1), label, fill="white")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
