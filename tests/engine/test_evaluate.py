import json
import math

import pytest
import torch
from PIL import Image

import engine
from engine import data, evaluate, rescale
from tests.official_irn import randomize


@pytest.fixture
def checkpoint(tmp_path):
    model = randomize(engine.build(2, blocks_per_stage=1, growth=4), std=0.02)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "step": 1}, path)
    return path


def test_evaluate_writes_a_table_grids_and_images(checkpoint, image_folder, capsys):
    evaluate.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--data",
            f"tiny={image_folder}",
            "--samples",
            "2",
            "--temperature",
            "0,1",
            "--grid",
            "1",
            "--save-images",
        ]
    )
    out_dir = checkpoint.parent.parent / "eval"
    result = json.loads((out_dir / "results.json").read_text())["results"]["tiny"]
    assert result["images"] == 3 and math.isfinite(result["lr_psnr_y"])
    assert set(result["settings"]) == {"z=0", "T=1"} and result["settings"]["T=1"]["samples"] == 2
    for row in result["settings"].values():
        assert math.isfinite(row["psnr_y"]) and 0 < row["ssim_y"] <= 1
    assert "| tiny | 3 |" in (out_dir / "results.md").read_text()
    grids = list((out_dir / "grids").glob("*.png"))
    assert len(grids) == 1
    h, w = data.read_folder(image_folder).images[0].shape[:2]
    with Image.open(grids[0]) as grid:  # HR, bicubic LR, IRN LR, z=0, T=1, error: six tiles, 4 px apart, under captions
        assert grid.size == (6 * w + 5 * 4, h + 14)
    assert len(list((out_dir / "images" / "tiny").rglob("*.png"))) == 6
    printed = capsys.readouterr().out
    assert "PSNR-Y" in printed and "tiny" in printed and "±" in printed


def test_zero_z_is_deterministic_and_seeded_z_repeats(checkpoint, image_folder):
    model = engine.load(checkpoint)
    images = data.read_folder(image_folder).images
    settings = evaluate.z_settings("sample", [0.0, 1.0], 2)
    first, second = (evaluate.evaluate_set(model, images, settings, "cpu") for _ in range(2))
    assert first == second
    assert first["settings"]["z=0"]["samples"] == 1 and first["settings"]["T=1"]["psnr_y_std"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "/missing.pt"], "no checkpoint at /missing.pt"),
        (["--data", "/missing"], "no folder at /missing"),
        (["--scale", "4"], "is an x2 model, not x4"),
        (["--temperature", "hot"], "--temperature takes numbers"),
    ],
)
def test_bad_evaluate_input_gives_one_line(args, message, checkpoint, capsys):
    full = args if args[0] == "--checkpoint" else ["--checkpoint", str(checkpoint), *args]
    with pytest.raises(SystemExit):
        evaluate.main(full)
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_rescale_down_then_up_returns_the_original_size(checkpoint, tmp_path):
    import numpy as np
    from PIL import Image

    src = tmp_path / "odd.png"
    Image.fromarray((np.random.default_rng(0).random((37, 29, 3)) * 255).astype(np.uint8)).save(src)
    rescale.main(["down", str(src), str(tmp_path / "lr.png"), "--checkpoint", str(checkpoint)])
    with Image.open(tmp_path / "lr.png") as lr:
        assert lr.size == (15, 19) and lr.info[rescale.SIZE_KEY] == "37x29"
    rescale.main(
        [
            "up",
            str(tmp_path / "lr.png"),
            str(tmp_path / "hr.png"),
            "--checkpoint",
            str(checkpoint),
            "--temperature",
            "0",
        ]
    )
    with Image.open(tmp_path / "hr.png") as hr:
        assert hr.size == (29, 37) and hr.mode == "RGB"


def test_rescale_folders_and_bad_input(checkpoint, image_folder, tmp_path, capsys):
    rescale.main(["down", str(image_folder), str(tmp_path / "lrs"), "--checkpoint", str(checkpoint)])
    assert sorted(p.name for p in (tmp_path / "lrs").iterdir()) == ["img0.png"]
    (tmp_path / "bad.png").write_bytes(b"not a png")
    for args, message in (
        (["/missing.png", "x.png"], "no file or folder"),
        ([str(tmp_path / "bad.png"), "x.png"], "cannot read"),
    ):
        with pytest.raises(SystemExit):
            rescale.main(["down", *args, "--checkpoint", str(checkpoint)])
        assert message in capsys.readouterr().err
