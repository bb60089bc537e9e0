"""The evaluation pass under a codec: each image's bits per pixel from its LR's file, and the LR that reaches the
upscale (decoded, then restored by a CRM) against Pillow's own decode and the official RRDBNet's restoration."""

import numpy as np
import torch
from PIL import Image

import engine
from engine.evaluation import metrics
from engine.evaluation.compression import CompressedRescaler, score_qualities, summarise_qualities
from engine.evaluation.scoring import z_settings
from engine.model import crm
from engine.model.irn import quantize
from tests.conftest import smooth_image
from tests.official_irn import randomize
from tests.official_rrdb import OfficialRRDBNet


def pillow_jpeg(lr, quality, path):
    """IRN's 8-bit LR saved as a JPEG file by Pillow and read back: (decoded LR, the file's bytes)."""
    Image.fromarray((lr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path, quality=quality)
    with Image.open(path) as decoded:
        return torch.from_numpy(np.asarray(decoded).transpose(2, 0, 1).copy())[None].float() / 255, path.stat().st_size


def test_bpp_and_the_received_lr_are_those_of_pillow_s_file_restored_by_the_official_crm(tmp_path):
    irn = randomize(engine.build(2, blocks_per_stage=1, growth=4), std=0.02)
    official = randomize(OfficialRRDBNet(nf=8, nb=1, gc=4), std=0.05, seed=2)
    restorer = crm.from_state_dict(official.state_dict())
    image = smooth_image(np.random.default_rng(3), 36, 44)
    settings = z_settings("sample", [0.0], 1)
    hr = torch.from_numpy(image.transpose(2, 0, 1).copy())[None].float() / 255
    with torch.no_grad():
        lr, _ = irn.downscale(hr)
        for quality in (40, 90):
            decoded, size = pillow_jpeg(lr, quality, tmp_path / f"lr{quality}.jpg")
            for restoring, received in ((None, decoded), (restorer, quantize(official(decoded)))):
                pipeline = CompressedRescaler(irn, "jpeg", 90, restoring)
                row = score_qualities(pipeline, [image], [quality], settings, "cpu")
                assert row[0][quality]["bpp"] == size * 8 / (36 * 44)  # the file's bits over the HR's pixels
                assert row[0][quality]["received_psnr_y"] == metrics.psnr(received, lr).item()
                up = irn.upscale(received, temperature=0.0)
                assert row[0][quality]["z=0"][0]["psnr_y"] == metrics.psnr(up, hr, 2).item()


def test_a_quality_s_summary_averages_its_images():
    rows = [{90: {"bpp": b, "received_psnr_y": p, "z=0": [{"psnr_y": p, "ssim_y": 0.5, "psnr_rgb": p}]}}
            for b, p in ((1.0, 30.0), (2.0, 40.0))]  # fmt: skip
    summary = summarise_qualities(rows, [90], z_settings("zero", [], 1))[90]
    assert (summary["bpp"], summary["received_psnr_y"], summary["settings"]["z=0"]["psnr_y"]) == (1.5, 35.0, 35.0)
