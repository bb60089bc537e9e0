"""Lossy codecs on the 8-bit LR: real JPEG and WebP through Pillow, as a stage between downscale and upscale.

`compress(lr, codec, quality)` encodes every image of a batch with Pillow at its own quality, decodes it
again and hands the decoded LR back on lr's device, with the encoded size of each image in bytes. The
gradient passes straight through (d decoded / d lr = identity), as the official IRN-Compression code
passes it through its JPEG: the codec is a step function of its input almost everywhere, and the identity
is the estimate that lets the loss after it reach the network before it.

It is a torch.library custom op with a fake implementation, so a training step under a codec is counted on
fake tensors (profiling/runtime/counting.py) and traced by torch.compile as one opaque op. The codec runs
on the host: on a GPU every call copies the LR to the CPU and back, a sync the step's "codec" phase times.
"""

import io

import numpy as np
import torch
from PIL import Image

CODECS = {"jpeg": "JPEG", "webp": "WEBP"}  # the codec names the flags take, and Pillow's format of each
# What a census counts for the op on a GPU: the LR's copy to the host and the decoded LR's copy back.
LAUNCHES = {"irnscope::lossy_codec": lambda args: 2}


def encode(image, codec, quality, **options):
    """The bytes of an HxWx3 uint8 image encoded by Pillow at `quality`, with Pillow's defaults otherwise
    (JPEG: 4:2:0 chroma subsampling, the standard tables scaled by quality; WebP: lossy, method 4). `options`
    go to Pillow's save as they are (a JPEG's comment, say)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=CODECS[codec], quality=int(quality), **options)
    return buffer.getvalue()


def decode(data):
    """An encoded image back as an HxWx3 uint8 array."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def to_bytes_images(x):
    """(B, 3, H, W) floats in [0, 1] as the BxHxWx3 uint8 array 8-bit files hold (rounded to nearest), on the
    host in one copy."""
    return x.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


@torch.library.custom_op("irnscope::lossy_codec", mutates_args=())
def _lossy_codec(lr: torch.Tensor, codec: str, quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [encode(image, codec, q) for image, q in zip(to_bytes_images(lr), quality.tolist(), strict=True)]
    decoded = torch.from_numpy(np.stack([decode(data) for data in encoded])).permute(0, 3, 1, 2)
    received = decoded.to(lr.device, lr.dtype).div_(255)
    return received, torch.tensor([len(data) for data in encoded], dtype=torch.int64)


@_lossy_codec.register_fake
def _(lr, codec, quality):
    return torch.empty_like(lr), quality.new_empty(quality.shape, dtype=torch.int64)


def _straight_through(ctx, grad_received, grad_sizes):
    return grad_received, None, None


_lossy_codec.register_autograd(_straight_through)


def compress(lr, codec, quality):
    """(decoded LR, encoded bytes per image) of a (B, 3, h, w) LR in [0, 1] through `codec` ("jpeg" or
    "webp"): `quality` is one quality for the batch or a (B,) tensor of one per image; the bytes come back
    as a (B,) int64 CPU tensor. Values are rounded to 8 bits before encoding; the LR a Rescaler hands out
    already is."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
    if not torch.is_tensor(quality):
        quality = torch.full((lr.shape[0],), int(quality), dtype=torch.int64)
    return _lossy_codec(lr, codec, quality.cpu())


def bits_per_pixel(n_bytes, hr_pixels):
    """Bits of the encoded LR per pixel of the HR it stands for, as the official IRN-Compression test measures
    (the file's bytes x 8 over the HR's height x width)."""
    return 8 * n_bytes / hr_pixels


def quality_range(qualities):
    """(low, high) of a quality flag's values: one quality (a fixed one) or LOW,HIGH (one drawn per sample)."""
    return qualities[0], qualities[-1]


def draw_quality(rng, qualities):
    """A quality drawn from `qualities` (one, or LOW,HIGH inclusive) with the numpy Generator `rng`."""
    low, high = quality_range(qualities)
    return int(rng.integers(low, high + 1))
