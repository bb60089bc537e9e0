import json
import math

import pytest
import torch
from PIL import Image

import engine
from engine import evaluate
from engine.data import image_files
from engine.evaluation import paper, scoring
from tests.engine.evaluation.test_benchmark_sets import make_benchmark
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
    h, w = image_files.read_folder(image_folder).images[0].shape[:2]
    with Image.open(grids[0]) as grid:  # HR, bicubic LR, IRN LR, z=0, T=1, error: six tiles, 4 px apart,
        # under two caption lines of 14 px, above the error map's scale bar (a line of 14 px and the 6 px bar)
        assert grid.size == (6 * w + 5 * 4, h + 2 * 14 + 14 + 6)
    assert len(list((out_dir / "images" / "tiny").rglob("*.png"))) == 6
    printed = capsys.readouterr().out
    assert "PSNR-Y" in printed and "tiny" in printed and "±" in printed


@pytest.fixture
def bench_root(tmp_path):
    return make_benchmark(tmp_path / "benchmark")


@pytest.mark.parametrize(
    "name, scale, expected",
    [
        ("Set5", 2, (43.99, 0.9871)),
        ("B100", 2, (41.32, 0.9876)),
        ("bsd100", 4, (31.64, 0.8826)),
        ("DIV2K_valid_HR", 4, (35.07, 0.9318)),
        ("DIV2K val", 2, (44.32, 0.9908)),
        ("urban100", 4, (31.41, 0.9157)),
        ("Set14", 4, (32.67, 0.9015)),
        ("DIV2K", 4, None),  # maybe the training set
        ("Manga109", 4, None),
        ("Set5", 3, None),
        ("Set5", 8, None),
    ],
)
def test_paper_values_by_set_name(name, scale, expected):
    assert paper.reported(name, scale) == expected


def test_the_table_carries_the_papers_cells_for_an_x2_checkpoint(
    checkpoint, bench_root, image_folder, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "eval"
    args = ["--checkpoint", str(checkpoint), "--data", str(bench_root), "--data", f"tiny={image_folder}"]
    printed = run_evaluate([*args, "--grid", "0", "--out", str(out)], monkeypatch, capsys)
    summary = json.loads((out / "results.json").read_text())
    assert summary["paper"]["compared_with"] == "T=1" and "Xiao" in summary["paper"]["source"]
    results = summary["results"]
    for name, (psnr, ssim) in paper.RESULTS[2].items():
        if name == "Set14":  # not in the folder
            assert name not in results
            continue
        cell = results[name]["paper"]
        assert (cell["set"], cell["psnr_y"], cell["ssim_y"], cell["compared_with"]) == (name, psnr, ssim, "T=1")
        ours = results[name]["settings"]["T=1"]
        assert cell["difference"]["psnr_y"] == pytest.approx(ours["psnr_y"] - psnr)
        assert cell["difference"]["ssim_y"] == pytest.approx(ours["ssim_y"] - ssim)
    assert results["tiny"]["paper"] is None
    diff = results["Set5"]["paper"]["difference"]
    set5 = f"43.99 / 0.9871 | {diff['psnr_y']:+.2f} / {diff['ssim_y']:+.4f} |"
    md = (out / "results.md").read_text()
    assert "| paper PSNR-Y / SSIM-Y | T=1 − paper |" in md and "sampled from N(0, 1)" in md
    assert next(r for r in md.splitlines() if r.startswith("| Set5 |")).endswith(set5)
    assert next(r for r in md.splitlines() if r.startswith("| tiny |")).endswith("| — | — |")
    assert set5.replace(" |", "") in " ".join(printed.replace("│", " ").split())  # the printed row, too
    assert "T=1" in printed.splitlines()[1] and "data: " in printed and "BSD100 in B100/GTmod12" in printed


def test_no_t1_column_keeps_the_papers_cell_without_a_difference():
    entry = paper.compare("B100", 4, {"z=0": {"psnr_y": 30.0, "ssim_y": 0.8}})
    assert entry == {"set": "BSD100", "psnr_y": 31.64, "ssim_y": 0.8826, "compared_with": None, "difference": None}
    assert paper.compare(None, 4, {}) is None and paper.compare("Set5", 3, {}) is None


def test_an_x8_checkpoint_shows_no_paper_cells(bench_root, tmp_path, monkeypatch, capsys):
    model = randomize(engine.build(8, blocks_per_stage=1, growth=4), std=0.02)
    path = tmp_path / "x8.pt"
    torch.save({"model": model.state_dict(), "step": 1}, path)
    out = tmp_path / "eval8"
    printed = run_evaluate(
        ["--checkpoint", str(path), "--data", str(bench_root / "Set5"), "--grid", "0", "--out", str(out)],
        monkeypatch,
        capsys,
    )
    summary = json.loads((out / "results.json").read_text())
    assert "paper" not in summary and summary["results"]["Set5"]["paper"] is None
    md = (out / "results.md").read_text()
    assert "paper PSNR-Y" not in md and "at x2 and x4 only, none at x8" in md
    assert "paper PSNR-Y" not in printed and "none at x8" in printed


def run_evaluate(args, monkeypatch, capsys):
    """engine.evaluate's printed output, on a console wide enough to keep every cell on one line."""
    monkeypatch.setenv("COLUMNS", "300")
    evaluate.main(args)
    return capsys.readouterr().out


def test_zero_z_is_deterministic_and_seeded_z_repeats(checkpoint, image_folder):
    model = engine.load(checkpoint)
    images = image_files.read_folder(image_folder).images
    settings = scoring.z_settings("sample", [0.0, 1.0], 2)
    first, second = (scoring.evaluate_set(model, images, settings, "cpu") for _ in range(2))
    assert first == second
    assert first["settings"]["z=0"]["samples"] == 1 and first["settings"]["T=1"]["psnr_y_std"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "/missing.pt"], "no checkpoint at /missing.pt"),
        (["--data", "/missing"], "no folder at /missing"),
        (["--data", "Set5="], "--data Set5=: no folder after the '='; give NAME=DIR or DIR"),
        (["--scale", "4"], "is an x2 model, not x4"),
        (["--temperature", "hot"], "argument --temperature: 'hot': expected comma-separated temperatures >= 0"),
        (["--temperature", "0,-1"], "expected comma-separated temperatures >= 0"),
        (["--samples", "0"], "argument --samples: '0': expected an integer >= 1"),
        (["--scale", "5"], "expected a power of two (2, 4, 8, 16, ...) or 3"),
        (["--device", "tpu"], "--device tpu: expected auto, cpu, cuda or cuda:N"),
        pytest.param(
            ["--device", "cuda"],
            "--device cuda needs a CUDA GPU, and none is visible; use --device cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible"),
        ),
        (["--out", "{file}"], "is a file; give a folder"),
        (["--out", "{done}"], "holds the results of an earlier evaluation; add --overwrite"),
    ],
)
def test_bad_evaluate_input_gives_one_line(args, message, checkpoint, capsys, tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text("{}")
    args = [a.format(file=tmp_path / "file", done=tmp_path / "done") for a in args]
    full = args if args[0] == "--checkpoint" else ["--checkpoint", str(checkpoint), *args]
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(full)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err
    assert (tmp_path / "done" / "results.json").read_text() == "{}"  # nothing written over


def test_a_folder_that_refuses_the_results_is_one_line_before_any_work(checkpoint, tmp_path, capsys, immutable):
    """A real EPERM from the kernel: the remedy is to run the command again, there is no run to resume."""
    (tmp_path / "locked").mkdir()
    immutable(tmp_path / "locked")
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "locked" / "eval")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Operation not permitted" in err, err
    assert "then run the command again" in err and "--resume" not in err


def test_under_jpeg_div2k_val_gets_sain_s_published_rows_and_our_differences(
    checkpoint, bench_root, tmp_path, monkeypatch, capsys
):
    out, div2k = tmp_path / "jpeg", bench_root / "DIV2K" / "DIV2K_valid_HR"
    args = ["--checkpoint", str(checkpoint), "--data", str(div2k), "--jpeg", "30,90,95", "--grid", "1"]
    printed = run_evaluate([*args, "--out", str(out)], monkeypatch, capsys)
    summary = json.loads((out / "results.json").read_text())
    entry = summary["results"]["DIV2K val"]["codecs"]["jpeg"]
    assert summary["published"]["compared_with"] == "T=1" and "SAIN" in summary["published"]["source"]
    # SAIN's README, DIV2K x2 table: QF 30 and 90 of its rows; it has no QF 95 and no HCFlow at x2
    published = {"Bicubic & Bicubic": (29.38, 31.96), "IRN": (29.24, 32.91), "SAIN": (31.47, 35.96)}
    assert {m: (r["30"]["psnr_y"], r["90"]["psnr_y"]) for m, r in entry["published"].items()} == published
    assert entry["published"]["IRN"]["90"]["ssim_y"] == 0.9023 and "95" not in entry["published"]["IRN"]
    for quality, sain in (("30", 31.47), ("90", 35.96)):
        ours = entry["qualities"][quality]["settings"]["T=1"]
        assert entry["published"]["SAIN"][quality]["difference"]["psnr_y"] == pytest.approx(ours["psnr_y"] - sain)
    assert entry["qualities"]["30"]["bpp"] < entry["qualities"]["90"]["bpp"] < entry["qualities"]["95"]["bpp"]
    md = (out / "results.md").read_text()
    rows = {row.split(" | ")[2]: row for row in md.splitlines() if row.count(" | ") > 3}
    assert rows["IRN (published)"].endswith("| 29.24 / 0.8051 | 32.91 / 0.9023 | — |")
    irn_30 = entry["published"]["IRN"]["30"]["difference"]
    assert rows["T=1 − IRN"].split(" | ")[3] == f"{irn_30['psnr_y']:+.2f} / {irn_30['ssim_y']:+.4f}"
    assert "HCFlow" not in md and "JPEG 95" in md and "under JPEG" in printed
    assert sorted(p.name for p in (out / "grids").iterdir()) == [f"DIV2K-val_0800_jpeg{q}.png" for q in (30, 90, 95)]


def test_a_crm_needs_a_codec_and_a_lone_crm_needs_its_irn(checkpoint, tmp_path, capsys):
    from engine.model import crm

    torch.save(crm.build(features=8, blocks=1, growth=4).state_dict(), tmp_path / "crm.pth")
    for args, message in (
        (["--checkpoint", str(checkpoint), "--crm", str(tmp_path / "crm.pth")], "--crm restores a compressed LR"),
        (["--checkpoint", str(tmp_path / "crm.pth"), "--jpeg", "90"], "is a CRM, not an IRN"),
        (["--checkpoint", str(checkpoint), "--jpeg", "0,90"], "'0,90': expected comma-separated qualities from 1 to"),
    ):
        with pytest.raises(SystemExit):
            evaluate.main([*args, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
