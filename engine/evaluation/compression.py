"""IRN under a lossy codec: HR -> IRN down -> 8-bit LR -> codec -> [CRM -> 8-bit] -> IRN up, and its scores.

The pass is the official IRN-Compression test's (codes/models/IRN_model_CRM.py): the codec (engine/data/codec.py)
encodes and decodes IRN's 8-bit LR; a CRM, where there is one, restores the decoded LR, rounded to 8 bits
again, and IRN upscales what arrives. Scores follow engine/evaluation/scoring.py (Y channel, `scale` border
pixels, seeded z); per quality each image also gets the encoded LR's bits per HR pixel (bpp) and the PSNR-Y
of the LR that reaches the upscale against the LR IRN made ("received PSNR-Y": what the codec took, and the
CRM gave back).
"""

import statistics

import torch
import torch.nn as nn

from engine.data import codec, tensors
from engine.evaluation import metrics, scoring
from engine.model.irn import quantize


class CompressedRescaler(nn.Module):
    """An IRN whose LR goes through `codec` at `quality` (and a CRM, if one is given) on its way to the upscale:
    the Rescaler's interface (scale, downscale, upscale), so that a scoring pass scores it as it scores an IRN."""

    def __init__(self, irn, codec_name, quality, crm=None):
        super().__init__()
        self.irn, self.crm = irn, crm
        self.codec, self.quality, self.scale = codec_name, quality, irn.scale

    def receive(self, lr, quality=None):
        """(the LR the upscale gets, encoded bytes per image) of IRN's 8-bit LR: decoded, then restored by the
        CRM and rounded to 8 bits."""
        decoded, n_bytes = codec.compress(lr, self.codec, self.quality if quality is None else quality)
        return (decoded if self.crm is None else quantize(self.crm(decoded))), n_bytes

    def downscale(self, hr):
        """(the LR that reaches the upscale, z)."""
        lr, z = self.irn.downscale(hr)
        return self.receive(lr)[0], z

    def upscale(self, lr, z=None, temperature=1.0, generator=None):
        return self.irn.upscale(lr, z, temperature, generator)


@torch.no_grad()
def score_qualities(pipeline, images, qualities, settings, device, on_image=None):
    """Per image, per quality: the encoded LR's bpp, the received LR's PSNR-Y against IRN's and each setting's
    upscale scores; IRN's LR is made once per image. `on_image(index, quality, hr, received, {label: upscale
    of the first seed})` sees every result (grids)."""
    pipeline.eval()
    rows = []
    for i, img in enumerate(images):
        hr = tensors.image_tensor(img, pipeline.scale).to(device)
        lr, _ = pipeline.irn.downscale(hr)
        row = {}
        for quality in qualities:
            received, n_bytes = pipeline.receive(lr, quality)
            scores, first = scoring.upscale_scores(pipeline, received, hr, settings, i)
            row[quality] = {
                "bpp": codec.bits_per_pixel(n_bytes.item(), hr.shape[-2] * hr.shape[-1]),
                "received_psnr_y": metrics.psnr(received, lr).item(),
                **scores,
            }
            if on_image:
                on_image(i, quality, hr, received, first)
        rows.append(row)
    return rows


def summarise_qualities(rows, qualities, settings):
    """{quality: mean bpp, mean received PSNR-Y and the settings' scores (scoring.summarise_settings)}."""
    return {
        quality: {
            "bpp": statistics.fmean(r[quality]["bpp"] for r in rows) if rows else None,
            "received_psnr_y": statistics.fmean(r[quality]["received_psnr_y"] for r in rows) if rows else None,
            "settings": scoring.summarise_settings([r[quality] for r in rows], settings),
        }
        for quality in qualities
    }
