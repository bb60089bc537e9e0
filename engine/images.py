"""Saving images: 8-bit PNGs and side-by-side grids of (B,3,H,W) tensors in [0, 1]."""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def to_uint8(img):
    """(3,H,W) or (1,3,H,W) float in [0, 1] -> HxWx3 uint8."""
    img = img.detach().float().cpu().squeeze(0).clamp(0, 1)
    return np.round(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def save_png(img, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(img)).save(path)


def grid(images, gap=4):
    """Images side by side, each upscaled (nearest) to the tallest one's size."""
    h = max(img.shape[-2] for img in images)
    w = max(img.shape[-1] for img in images)
    tiles = [F.interpolate(img[None] if img.dim() == 3 else img, size=(h, w), mode="nearest") for img in images]
    spacer = torch.ones(1, 3, h, gap, dtype=tiles[0].dtype, device=tiles[0].device)
    row = [t for tile in tiles for t in (tile, spacer)][:-1]
    return torch.cat(row, dim=3)
