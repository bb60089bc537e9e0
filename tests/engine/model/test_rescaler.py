import re
import zipfile

import numpy as np
import pytest
import torch

import engine
from engine.errors import UserError
from tests.official_irn import OfficialIRN, randomize


@pytest.fixture(scope="module")
def x4_official():
    return randomize(OfficialIRN(4, blocks=8), std=0.02, seed=4)


def save(obj, tmp_path, name="w.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("wrap", ["plain", "module_prefix", "wrapped", "no_haar"])
def test_load_accepts_official_layouts_and_infers_the_scale(x4_official, tmp_path, wrap):
    state = x4_official.state_dict()
    if wrap == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "wrapped":
        state = {"state_dict": state, "iter": 5000}
    elif wrap == "no_haar":
        state = {k: v for k, v in state.items() if "haar" not in k}
    model = engine.load(save(state, tmp_path))
    assert model.scale == 4 and model.arch["blocks_per_stage"] == 8
    hr = torch.rand(1, 3, 16, 12)
    with torch.no_grad():
        lr, z = model.downscale(hr, quantize=False)
        out = x4_official(hr)
        assert torch.allclose(lr, out[:, :3], atol=1e-5) and torch.allclose(z, out[:, 3:], atol=1e-5)
        up = model.upscale(lr, z)
        assert torch.allclose(up, x4_official(torch.cat((lr, z), 1), rev=True)[:, :3], atol=1e-5)
        assert torch.allclose(up, hr, atol=1e-4)


def test_downscale_quantizes_and_upscale_samples_z():
    model = randomize(engine.build(2, blocks_per_stage=1))
    hr = torch.rand(2, 3, 8, 8)
    lr, z = model.downscale(hr)
    assert torch.equal(lr, torch.round(lr.clamp(0, 1) * 255) / 255) and z.shape == (2, 9, 4, 4)

    def seeded():
        return torch.Generator().manual_seed(3)

    a = model.upscale(lr, generator=seeded())
    assert torch.equal(a, model.upscale(lr, generator=seeded()))
    assert not torch.equal(a, model.upscale(lr, generator=seeded(), temperature=0.5))
    assert torch.equal(model.upscale(lr, temperature=0.0), model.upscale(lr, torch.zeros_like(z)))


@pytest.mark.parametrize("clamp", [1.0, 2.0])  # the clamp is not in the weights: the checkpoint's arch gives it
def test_own_state_dict_round_trips(tmp_path, clamp):
    model = randomize(engine.build(8, blocks_per_stage=1, clamp=clamp))
    loaded = engine.load(save({"model": model.state_dict(), "arch": model.arch, "step": 3}, tmp_path))
    assert loaded.arch == model.arch
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "shape, message",
    [((1, 3, 10, 8), "multiples of 4"), ((1, 1, 8, 8), "RGB"), ((3, 8, 8), "RGB")],
)
def test_bad_images_get_one_line_errors(shape, message):
    with pytest.raises(UserError, match=message) as err:
        engine.build(4).downscale(torch.rand(shape))
    assert "\n" not in str(err.value)


def test_unknown_layout_names_the_keys(tmp_path, x4_official):
    state = x4_official.state_dict()
    state["operations.1.F.extra.weight"] = torch.zeros(1)
    del state["operations.2.G.conv3.bias"]
    with pytest.raises(UserError, match=r"missing keys \['net.module_list.2.G.conv3.bias'\].*extra"):
        engine.load(save(state, tmp_path))


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"foo.weight": torch.zeros(3)}, "cannot infer the scale"),
        ({"iter": 3}, "no state dict"),
        ([1, 2], "no state dict"),
    ],
)
def test_checkpoints_that_are_not_irn_are_refused(tmp_path, obj, message):
    with pytest.raises(UserError, match=message):
        engine.load(save(obj, tmp_path))


def test_missing_checkpoint_and_bad_scale():
    with pytest.raises(UserError, match="no checkpoint"):
        engine.load("/nonexistent/IRN_x4.pth")
    for scale in (5, 6, 1):
        with pytest.raises(UserError, match=r"power of two \(2, 4, 8, ...\) or 3, got"):
            engine.build(scale)


@pytest.fixture(scope="module")
def x3_official():
    return randomize(OfficialIRN(3, blocks=12), std=0.02, seed=3)


def test_load_maps_an_official_x3_release_and_gives_its_outputs(x3_official, tmp_path):
    state = x3_official.state_dict()
    assert "operations.0.conv_weights" in state and "operations.12.H.conv5.bias" in state
    model = engine.load(save({"state_dict": state}, tmp_path))
    assert model.arch == dict(scale=3, blocks_per_stage=12, growth=32, clamp=1.0)
    assert torch.equal(model.net.module_list[0].conv_weights, state["operations.0.conv_weights"])
    hr = torch.rand(1, 3, 12, 9)
    with torch.no_grad():
        lr, z = model.downscale(hr, quantize=False)
        out = x3_official(hr)
        assert lr.shape == (1, 3, 4, 3) and z.shape == (1, 24, 4, 3)
        assert torch.allclose(lr, out[:, :3], atol=1e-5) and torch.allclose(z, out[:, 3:], atol=1e-5)
        up = model.upscale(lr, z)
        assert torch.allclose(up, x3_official(torch.cat((lr, z), 1), rev=True)[:, :3], atol=1e-5)
        assert torch.allclose(up, hr, atol=1e-4)


def test_x3_layouts_that_do_not_fit_are_refused(x3_official, tmp_path):
    state = x3_official.state_dict()
    without = {k: v for k, v in state.items() if k != "operations.0.conv_weights"}
    with pytest.raises(UserError, match="widest block has 27 channels.*no learnable downsampling"):
        engine.load(save(without, tmp_path))
    for matrix in (torch.eye(16), torch.eye(9)[:3]):  # a 4x4 downsampling before 27 channels, a non-square one
        with pytest.raises(UserError, match="cannot infer the scale: a learnable downsampling matrix") as err:
            engine.load(save({**state, "operations.0.conv_weights": matrix}, tmp_path))
        assert "\n" not in str(err.value)


def test_x3_images_must_be_multiples_of_3():
    model = engine.build(3, blocks_per_stage=1, growth=4)
    with pytest.raises(UserError, match="multiples of 3 at this scale; crop or pad to 9x6 or 12x9"):
        model.downscale(torch.rand(1, 3, 10, 8))
    lr, z = model.downscale(torch.rand(1, 3, 9, 6))
    assert lr.shape == (1, 3, 3, 2) and z.shape == (1, 24, 3, 2)


def test_evaluate_and_rescale_accept_an_x3_checkpoint(image_folder, tmp_path):
    import json

    from PIL import Image

    from engine import evaluate, rescale

    model = randomize(engine.build(3, blocks_per_stage=1, growth=4), std=0.02)
    checkpoint = tmp_path / "x3.pt"
    torch.save({"model": model.state_dict(), "step": 1}, checkpoint)
    out = tmp_path / "eval"
    evaluate.main(
        ["--checkpoint", str(checkpoint), "--data", f"tiny={image_folder}", "--scale", "3", "--out", str(out)]
    )
    summary = json.loads((out / "results.json").read_text())
    assert summary["scale"] == 3 and summary["results"]["tiny"]["images"] == 3
    # A fresh x3 network: identity couplings after the official downsampling's start, W = identity with its first
    # row 1/9, so the LR is each 3x3 block's mean and, with z = 0, W^-1 puts 9x that mean in each block's first
    # pixel and zeros in the others.
    fresh = tmp_path / "fresh.pt"
    torch.save({"model": engine.build(3, blocks_per_stage=1, growth=4).state_dict()}, fresh)
    photo = (np.random.default_rng(0).random((12, 15, 3)) * 40).astype(np.uint8)  # 9 x the mean stays below 255
    Image.fromarray(photo).save(tmp_path / "photo.png")
    rescale.main(["down", str(tmp_path / "photo.png"), str(tmp_path / "lr.png"), "--checkpoint", str(fresh)])
    rescale.main(
        ["up", str(tmp_path / "lr.png"), str(tmp_path / "hr.png"), "--checkpoint", str(fresh), "--temperature", "0"]
    )
    lr, up = np.asarray(Image.open(tmp_path / "lr.png")).astype(int), np.asarray(Image.open(tmp_path / "hr.png"))
    means = photo.astype(float).reshape(4, 3, 5, 3, 3).mean(axis=(1, 3))
    assert lr.shape == (4, 5, 3) and np.abs(lr - np.round(means)).max() <= 1
    first = np.zeros_like(photo, dtype=int)
    first[::3, ::3] = np.minimum(255, np.round(9 * lr))
    assert up.shape == photo.shape and np.abs(up.astype(int) - first).max() <= 1


def test_the_x3_config_is_the_official_recipe_and_builds_the_official_network():
    from engine.training import config

    cfg, _ = config.resolve(["--config", "irn_x3"])
    x4, _ = config.resolve(["--config", "irn_x4"])
    assert (cfg.scale, cfg.blocks_per_stage, cfg.lambda_fit, cfg.crop) == (3, 12, 9.0, 144)
    differ = {k for k, v in cfg.to_json().items() if v != x4.to_json()[k]}
    assert differ == {"scale", "blocks_per_stage", "lambda_fit", "config"}  # otherwise the x4 recipe
    model = engine.build(cfg.scale, blocks_per_stage=cfg.blocks_per_stage, growth=cfg.growth)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 3_139_029


class _NotWeights:
    pass


def _with_version(src, dst, version):
    """A copy of a torch.save zip whose format version is `version` (as a newer torch would write it)."""
    with zipfile.ZipFile(src) as whole, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
        for name in whole.namelist():
            out.writestr(name, f"{version}\n".encode() if name.endswith("/version") else whole.read(name))


@pytest.mark.parametrize(
    "make, cause",
    [
        (lambda good, bad: bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2]), "is cut short"),
        (lambda good, bad: bad.write_bytes(b""), "is cut short"),
        (lambda good, bad: bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64)), "is not a PyTorch checkpoint"),
        (lambda good, bad: bad.write_text("hello\n"), "is not a PyTorch checkpoint"),  # the legacy unpickler's KeyError
        (lambda good, bad: torch.save({"net": _NotWeights()}, bad), "of type tests.engine.model.test_rescaler._Not"),
        (lambda good, bad: _with_version(good, bad, 99), "was written by a newer torch"),
    ],
    ids=["truncated", "empty", "png", "text", "refused-object", "newer-torch"],
)
def test_a_checkpoint_that_cannot_be_loaded_says_why(tmp_path, make, cause):
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save(engine.build(2, blocks_per_stage=1, growth=4).state_dict(), good)
    make(good, bad)
    with pytest.raises(engine.UserError, match=re.escape(cause)):
        engine.load(bad)
    assert engine.load(good).scale == 2
