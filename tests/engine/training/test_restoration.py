"""Training a CRM on a frozen IRN with the official IRN-Compression recipe (configs/irn_crm_x2_q90.toml), on the CPU:
its restoration loss falls, IRN stays as --init-from gave it, the joint loss counts from its step, a resumed run
repeats an uninterrupted one, and the checkpoint evaluates under JPEG."""

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import engine
from engine import evaluate, train
from engine.data import crops, image_files
from engine.model import crm
from engine.model.irn import quantize
from engine.model.losses import charbonnier
from engine.training import config
from engine.training.explosion_guard import ExplosionGuard
from engine.training.restoration import RestorationTrainer
from profiling import records
from profiling.records import read_jsonl
from profiling.runtime.timer import PhaseTimer
from tests import official_rrdb
from tests.conftest import TINY

TINY_CRM = [*TINY, "--config", "irn_crm_x2_q90", "--crm-features", "8", "--crm-blocks", "1", "--crm-growth", "8"]


@pytest.fixture
def irn_run(image_folder, in_tmp):
    """A tiny IRN trained for two steps: the run folder a CRM starts from."""
    train.main([*TINY, "--data", str(image_folder), "--steps", "2", "--name", "irn"])
    return Path("runs/irn")


def crm_run(image_folder, name, *args):
    train.main([*TINY_CRM, "--data", str(image_folder), "--val", str(image_folder), "--name", name, *args])
    return Path("runs") / name


def test_a_short_crm_run_on_a_frozen_irn_lowers_its_restoration_loss_and_evaluates_under_jpeg(
    image_folder, irn_run, capsys
):
    run = crm_run(image_folder, "crm", "--init-from", str(irn_run), "--steps", "20", "--lr", "1e-3")
    restore = [r["restore"] for r in read_jsonl(run / "metrics.jsonl")]
    assert len(restore) == 20 and sum(restore[-5:]) < 0.5 * sum(restore[:5])
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    irn = torch.load(irn_run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(state["irn"]["model"][k], v) for k, v in irn.items())  # frozen: as --init-from gave it
    trained = f"CRM of 1 RRDBs, 8 features, growth 8: {official_rrdb.parameters(nf=8, nb=1, gc=8):,} parameters"
    assert (
        f"network: {trained}, trained on a frozen IRN x2, 1 blocks per stage, growth 4"
        in (run / records.LOG).read_text()
    )
    last = run / "checkpoints" / "last.pt"
    restorer = engine.load(last)
    assert isinstance(restorer, crm.CRM) and restorer.arch == dict(features=8, blocks=1, growth=8)
    capsys.readouterr()
    evaluate.main(["--checkpoint", str(last), "--data", str(image_folder), "--jpeg", "30,90"])
    printed = capsys.readouterr().out
    assert "under JPEG + CRM" in printed and "JPEG 30" in printed and "bpp" in printed


def test_a_resumed_crm_run_repeats_an_uninterrupted_one(image_folder, irn_run):
    ranged = ["--init-from", str(irn_run), "--codec-quality", "30,90"]  # a quality drawn per sample
    whole = crm_run(image_folder, "whole", *ranged, "--steps", "6")
    split = crm_run(image_folder, "split", *ranged, "--steps", "4")
    train.main(["--resume", str(split), "--steps", "6"])
    assert [r["restore"] for r in read_jsonl(split / "metrics.jsonl")] == [
        r["restore"] for r in read_jsonl(whole / "metrics.jsonl")
    ]


def pillow_jpeg(lr, quality):
    """A (B, 3, h, w) LR through Pillow's own JPEG encode and decode, image by image."""
    import io

    out = []
    for image, q in zip(lr, quality.tolist(), strict=True):
        buffer = io.BytesIO()
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buffer, "JPEG", quality=q)
        out.append(np.asarray(Image.open(buffer).convert("RGB")).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)).float() / 255


def test_the_joint_loss_through_irn_s_inverse_counts_from_its_step(image_folder, tmp_path):
    cfg, _ = config.resolve([*TINY_CRM, "--data", str(image_folder), "--lambda-joint", "0.5", "--joint-from", "1"])
    images = image_files.read_folder(image_folder, cfg.crop)
    batch = next(iter(crops.loader(crops.training_set(images, cfg.scale), cfg, 0)))
    guard = ExplosionGuard(
        tmp_path, cfg.explosion_factor, cfg.explosion_window, cfg.max_bad_steps, images.names, cfg.grad_clip
    )
    trainer = RestorationTrainer(replace(cfg, init_from=""), torch.device("cpu"))
    trainer.step(batch, PhaseTimer("cpu"), guard, 0)
    assert set(trainer.drain(guard).losses) == {"restore"}
    model = copy.deepcopy(trainer.model)  # the weights step 1 computes its losses with
    hr = batch["hr"].float() / 255
    with torch.no_grad():
        lr, _ = model.irn.downscale(hr)
        restored = model.crm(pillow_jpeg(lr, batch["quality"]))
        back = model.irn(torch.cat((quantize(restored), cfg.z_scale * batch["noise"]), 1), rev=True)[:, :3]
    trainer.step(batch, PhaseTimer("cpu"), guard, 1)
    losses = trainer.drain(guard).losses
    assert losses["joint_rec"] == pytest.approx(0.5 * charbonnier(back, hr).item(), rel=1e-5)
    assert losses["restore"] == pytest.approx((restored - lr).pow(2).sum().item() / 2, rel=1e-5)
    assert all(not p.requires_grad for p in trainer.model.irn.parameters())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--codec", "none"], "--crm true: expected false without a codec: a CRM restores a compressed LR"),
        (["--codec-quality", "90,30"], "--codec-quality 90,30: expected a quality from 1 to 100, or LOW,HIGH"),
        ([], "--crm trains on a frozen IRN: give its weights with --init-from"),
    ],
)
def test_a_crm_run_s_mistakes_are_one_line(image_folder, in_tmp, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        train.main([*TINY_CRM, "--data", str(image_folder), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not Path("runs").exists()
