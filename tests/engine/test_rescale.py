"""engine.rescale as a user runs it, with a fresh network: every coupling block starts as the identity (its last
convs are zero), so the network is the Haar transform, and down then up with z = 0 gives each 2x2 block its
mean: an expectation independent of the code under test."""

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

import engine
from engine import rescale


@pytest.fixture
def haar_only(tmp_path):
    path = tmp_path / "haar.pt"
    torch.save({"model": engine.build(2, blocks_per_stage=1, growth=4).state_dict()}, path)
    return path


def block_means(img):
    """Each 2x2 block of an 8-bit image replaced by its mean, rounded to 8 bits (the Haar LR, then its inverse)."""
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    blocks = img[:h, :w].astype(np.float64).reshape(h // 2, 2, w // 2, 2, *img.shape[2:]).mean(axis=(1, 3))
    return np.round(blocks).repeat(2, axis=0).repeat(2, axis=1)


def run(*args, checkpoint):
    rescale.main([*map(str, args), "--checkpoint", str(checkpoint)])


def test_down_then_up_gives_the_original_size_and_its_haar_reconstruction(haar_only, tmp_path):
    photo = (np.random.default_rng(0).random((37, 29, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "odd.png")
    run("down", tmp_path / "odd.png", tmp_path / "lr.png", checkpoint=haar_only)
    with Image.open(tmp_path / "lr.png") as lr:
        assert lr.size == (15, 19) and lr.info[rescale.SIZE_KEY] == "37x29"
    run("up", tmp_path / "lr.png", tmp_path / "hr.png", "--temperature", "0", checkpoint=haar_only)
    hr = np.asarray(Image.open(tmp_path / "hr.png"))
    assert hr.shape == photo.shape  # (H, W, RGB): the original size, cropped back from the padding
    inside = block_means(photo)  # the blocks of original pixels only (the last row is padding's)
    assert np.abs(hr[: inside.shape[0], : inside.shape[1]].astype(int) - inside).max() <= 1


def test_a_grayscale_photo_comes_back_grayscale(haar_only, tmp_path):
    gray = (np.random.default_rng(1).random((20, 24)) * 255).astype(np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    run("down", tmp_path / "gray.png", tmp_path / "lr.png", checkpoint=haar_only)
    run("up", tmp_path / "lr.png", tmp_path / "hr.png", "--temperature", "0", checkpoint=haar_only)
    with Image.open(tmp_path / "hr.png") as hr:
        assert hr.mode == "L" and np.abs(np.asarray(hr).astype(int) - block_means(gray)).max() <= 1


def test_up_writes_the_format_its_output_names(haar_only, tmp_path):
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / "a.png")
    run("down", tmp_path / "a.png", tmp_path / "lr.png", checkpoint=haar_only)
    run("up", tmp_path / "lr.png", tmp_path / "hr.jpg", checkpoint=haar_only)
    with Image.open(tmp_path / "hr.jpg") as hr:
        assert hr.format == "JPEG" and hr.size == (8, 8)


def test_a_jpeg_lr_is_pillow_s_jpeg_of_the_lossless_one_and_keeps_its_size_tag(haar_only, tmp_path):
    photo = (np.random.default_rng(2).random((37, 29, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "odd.png")
    run("down", tmp_path / "odd.png", tmp_path / "lr.png", checkpoint=haar_only)
    run("down", tmp_path / "odd.png", tmp_path / "lr.jpg", "--jpeg", "70", checkpoint=haar_only)
    Image.open(tmp_path / "lr.png").convert("RGB").save(tmp_path / "pillow.jpg", quality=70)
    with Image.open(tmp_path / "lr.jpg") as ours, Image.open(tmp_path / "pillow.jpg") as pillows:
        assert ours.format == "JPEG" and np.array_equal(np.asarray(ours), np.asarray(pillows))
    run("up", tmp_path / "lr.jpg", tmp_path / "hr.png", "--temperature", "0", checkpoint=haar_only)
    assert np.asarray(Image.open(tmp_path / "hr.png")).shape == photo.shape


def test_up_restores_the_decoded_lr_with_the_crm_before_upscaling(haar_only, tmp_path):
    """With identity coupling blocks and z = 0 the upscale repeats each LR pixel 2x2: the HR is the official
    RRDBNet's restoration of the JPEG LR, rounded to 8 bits, repeated."""
    from tests.official_irn import randomize
    from tests.official_rrdb import OfficialRRDBNet

    official = randomize(OfficialRRDBNet(nf=8, nb=1, gc=4), std=0.05, seed=5)
    torch.save(official.state_dict(), tmp_path / "crm.pth")
    photo = (np.random.default_rng(3).random((16, 12, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "p.png")
    run("down", tmp_path / "p.png", tmp_path / "lr.jpg", "--jpeg", "50", checkpoint=haar_only)
    run("up", tmp_path / "lr.jpg", tmp_path / "hr.png", "--temperature", "0", "--crm", tmp_path / "crm.pth",
        checkpoint=haar_only)  # fmt: skip
    decoded = torch.from_numpy(np.asarray(Image.open(tmp_path / "lr.jpg")).transpose(2, 0, 1).copy())[None] / 255
    with torch.no_grad():
        restored = (official(decoded).clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy()
    hr = np.asarray(Image.open(tmp_path / "hr.png")).astype(float)
    assert np.abs(hr - restored.repeat(2, axis=0).repeat(2, axis=1)).max() <= 1


def test_an_untagged_image_is_upscaled_with_a_notice(haar_only, tmp_path, capsys):
    Image.fromarray(np.full((6, 5, 3), 90, np.uint8)).save(tmp_path / "plain.png")
    run("up", tmp_path / "plain.png", tmp_path / "big.png", checkpoint=haar_only)
    assert "has no irn-hr-size tag" in capsys.readouterr().out and Image.open(tmp_path / "big.png").size == (10, 12)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no file or folder"),
        ("not-an-image", "cannot read"),
        ("collision", "photo.jpg and photo.png would both be written to"),
        ("exists", "exists (1 of the outputs do); add --overwrite"),
        ("lr-as-jpeg", "an LR is written as PNG"),
        ("jpeg-as-png", "--jpeg writes the LR as JPEG; name it .jpg"),
        ("jpeg-up", "--jpeg is an option of down"),
        ("bad-tag", "its irn-hr-size tag is 'big', not HxW"),
        ("impossible-tag", "its irn-hr-size tag says 99999x16, which an x2 LR of 8x8 does not come from"),
        ("gray-tag", "its irn-hr-gray tag is 'maybe', not 0 or 1"),
        ("device", "--device tpu: expected auto, cpu, cuda or cuda:N"),
        ("temperature", "argument --temperature: '-1': expected a finite number >= 0"),
    ],
)
def test_what_a_user_gets_wrong_is_one_line_and_writes_nothing(haar_only, tmp_path, capsys, case, message):
    photos = tmp_path / "photos"
    photos.mkdir()
    image = Image.fromarray(np.full((8, 8, 3), 50, np.uint8))
    image.save(photos / "photo.png")
    out = tmp_path / "out"
    for name, tags in {"tagged": {rescale.SIZE_KEY: "big"}, "impossible": {rescale.SIZE_KEY: "99999x16"},
                       "gray": {rescale.SIZE_KEY: "16x16", rescale.GRAY_KEY: "maybe"}}.items():  # fmt: skip
        info = PngImagePlugin.PngInfo()
        for key, value in tags.items():
            info.add_text(key, value)
        image.save(tmp_path / f"{name}.png", pnginfo=info)
    args = {
        "missing": ["down", tmp_path / "none.png", out],
        "not-an-image": ["down", tmp_path / "bad.png", out],
        "collision": ["down", photos, out],
        "exists": ["down", photos / "photo.png", tmp_path / "taken.png"],
        "lr-as-jpeg": ["down", photos / "photo.png", tmp_path / "lr.jpg"],
        "jpeg-as-png": ["down", photos / "photo.png", tmp_path / "lr.png", "--jpeg", "90"],
        "jpeg-up": ["up", photos / "photo.png", out, "--jpeg", "90"],
        "bad-tag": ["up", tmp_path / "tagged.png", out / "hr.png"],
        "impossible-tag": ["up", tmp_path / "impossible.png", out / "hr.png"],
        "gray-tag": ["up", tmp_path / "gray.png", out / "hr.png"],
        "device": ["down", photos / "photo.png", out, "--device", "tpu"],
        "temperature": ["up", photos / "photo.png", out, "--temperature", "-1"],
    }[case]
    (tmp_path / "bad.png").write_bytes(b"not a png")
    image.save(photos / "photo.jpg")
    (tmp_path / "taken.png").write_bytes(b"mine")
    with pytest.raises(SystemExit) as exit_info:
        run(*args, checkpoint=haar_only)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists() and (tmp_path / "taken.png").read_bytes() == b"mine"
