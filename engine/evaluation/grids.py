"""Captioned image grids: tiles side by side on a grey canvas, used by validation and evaluation. A rescale
grid gives each panel its PSNR-Y (an upscale against the HR, IRN's LR against the bicubic one) and its error
map a scale bar in 8-bit levels."""

from pathlib import Path

import torch.nn.functional as F
from PIL import Image, ImageDraw

from engine.data import tensors
from engine.data.image_files import to_uint8
from engine.evaluation import metrics

CAPTION_PX, GAP_PX, BAR_PX = 14, 4, 6
ERROR_GAIN = 8.0  # the error map's amplification: |SR - HR| of 1/8 shows white


def save_grid(images, labels, path, scale_bar=None):
    """Images side by side, each upscaled (nearest) to the tallest one's size, with a caption above each;
    `scale_bar` ("low", "high") draws a black-to-white bar under the last tile, labelled at its ends."""
    h = max(img.shape[-2] for img in images)
    w = max(img.shape[-1] for img in images)
    bar = CAPTION_PX + BAR_PX if scale_bar else 0
    # Grey, so that an all-white (saturated error) or all-black tile still shows its edges.
    canvas = Image.new("RGB", (len(images) * (w + GAP_PX) - GAP_PX, h + 2 * CAPTION_PX + bar), (96, 96, 96))
    draw = ImageDraw.Draw(canvas)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        tile = F.interpolate(img[None] if img.dim() == 3 else img, size=(h, w), mode="nearest")
        canvas.paste(Image.fromarray(to_uint8(tile)), (i * (w + GAP_PX), 2 * CAPTION_PX))
        for line, text in enumerate(label.split("\n")[:2]):  # a caption of up to two lines
            draw.text((i * (w + GAP_PX) + 2, 1 + line * CAPTION_PX), text, fill="white")
    if scale_bar:
        left, top = (len(images) - 1) * (w + GAP_PX), 2 * CAPTION_PX + h + 2
        for x in range(w):
            level = round(255 * x / max(w - 1, 1))
            draw.line([(left + x, top), (left + x, top + BAR_PX - 1)], fill=(level, level, level))
        draw.text((left + 1, top + BAR_PX), scale_bar[0], fill="white")
        draw.text((left + w - 6 * len(scale_bar[1]) - 1, top + BAR_PX), scale_bar[1], fill="white")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def error_map(sr, hr, gain=ERROR_GAIN):
    """|SR - HR| per pixel (mean over RGB), amplified, as a grey image."""
    return ((sr - hr).abs().mean(1, keepdim=True) * gain).clamp(0, 1).expand(-1, 3, -1, -1)


def centre_crop(x, size):
    h, w = x.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return x[..., top : top + size, left : left + size]


def save_rescale_grid(hr, lr, upscales, scale, path, crop=192, lr_label="IRN LR"):
    """HR | bicubic LR | IRN's LR (or the LR a codec delivered: `lr_label`) | each upscale | error map of the last
    upscale: centre crops, captioned with the whole image's PSNR-Y (border `scale`)."""
    crop -= crop % scale
    bicubic = tensors.bicubic_down(hr, scale).clamp(0, 1)
    last = list(upscales)[-1]
    tiles = [centre_crop(hr, crop), centre_crop(bicubic, crop // scale), centre_crop(lr, crop // scale)]
    tiles += [centre_crop(sr.clamp(0, 1), crop) for sr in upscales.values()]
    tiles.append(centre_crop(error_map(upscales[last], hr), crop))
    lr_psnr = metrics.psnr(lr, bicubic).item()
    ups = [f"up, {label}\nPSNR-Y {metrics.psnr(sr, hr, scale).item():.2f} dB" for label, sr in upscales.items()]
    labels = ["HR", "bicubic LR", f"{lr_label}\n{lr_psnr:.2f} dB vs bicubic", *ups, f"|error| x{ERROR_GAIN:g}\n{last}"]
    save_grid(tiles, labels, path, scale_bar=("0", f"{255 / ERROR_GAIN:.0f}+ levels"))
