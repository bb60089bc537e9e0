"""Images as files: (B,3,H,W) float tensors in [0, 1] to 8-bit arrays and PNGs."""

from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(img):
    """(3,H,W) or (1,3,H,W) float in [0, 1] -> HxWx3 uint8."""
    img = img.detach().float().cpu().squeeze(0).clamp(0, 1)
    return np.round(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def save_png(img, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(img)).save(path)
