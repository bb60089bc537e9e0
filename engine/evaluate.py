"""Evaluate a checkpoint with the paper's conventions (engine/evaluation/scoring.py) and write the table.

    python -m engine.evaluate --checkpoint CKPT [--data Set5=DIR ...] [--z sample|zero] [--samples K]
                              [--temperature 0,0.5,0.8,1.0] [--grid N] [--save-images] [--out DIR]

--data takes a folder of HR images, a benchmark set's folder (its HR images in HR/, GTmod12/, original/
or image_SRF_N/*_HR.png beside the LR ones) or a folder of benchmark sets (e.g. benchmark/ with Set5/,
Set14/, B100/, Urban100/, DIV2K/DIV2K_valid_HR/): every set the paper reports becomes a row under its
paper name. The table (PSNR-Y / SSIM-Y per set and z setting, mean +- std over z samples; for the
paper's sets at x2 and x4 the paper's numbers, sampled z, beside the T=1 column with the difference) is
printed and saved as JSON and Markdown beside captioned grids of the first images.
"""

import json
import math
import os
import re
import sys
from pathlib import Path

from rich.markup import escape

import engine
from engine import terminal
from engine.data import image_files
from engine.data.image_files import save_png
from engine.errors import UserError, cli, parser
from engine.evaluation import metrics, paper
from engine.evaluation.benchmark_sets import EvalSet, load_sets
from engine.evaluation.grids import save_rescale_grid
from engine.evaluation.results_table import markdown, table, table_rows, table_title
from engine.evaluation.scoring import evaluate_set, z_settings
from engine.model import execution
from engine.training import config
from engine.training.config import flag_type

EMBEDDED_SET = "held-out (embedded)"


def file_name(label):
    """A set name or column label as a shell-friendly file name: 'held-out (embedded)' -> 'held-out-embedded'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-")


def default_out(checkpoint):
    path = Path(checkpoint).resolve()
    return path.parent.parent / "eval" if path.parent.name == "checkpoints" else Path("eval")


def parse_args(argv):
    p = parser("python -m engine.evaluate", __doc__)
    p.add_argument("--checkpoint", required=True, help="this project's checkpoint or an official IRN .pth")
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="a folder of HR images, a benchmark set's folder or a folder of benchmark sets (repeatable)",
    )
    p.add_argument("--scale", type=flag_type(int, config.a_scale), help="refuse a checkpoint of another scale")
    p.add_argument("--z", choices=("sample", "zero"), default="sample")
    p.add_argument(
        "--samples", type=flag_type(int, config.integer(1)), default=1, help="z samples per image (mean ± std)"
    )
    p.add_argument(
        "--temperature",
        dest="temperatures",
        type=flag_type(config.NUMBERS, temperatures),
        default=[0.0, 1.0],
        help="temperatures of z, 0 meaning z = 0, e.g. 0,0.5,0.8,1.0 (default: 0,1)",
    )
    p.add_argument(
        "--grid", type=flag_type(int, config.integer(0)), default=3, help="image grids for the first N images of a set"
    )
    p.add_argument("--save-images", action="store_true", help="write every upscaled image (seed 0)")
    p.add_argument("--out", help="the folder the table, grids and images go to (default: the run's eval/ folder)")
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    p.add_argument("--device", default="auto", help=f"{execution.DEVICE_CHOICES} (default: auto)")
    args = p.parse_args(argv)
    args.device = execution.device_for(args.device)
    return args


def temperatures(v, cfg):
    ok = isinstance(v, list) and v and all(math.isfinite(t) and t >= 0 for t in v)
    return None if ok else "comma-separated temperatures >= 0, like 0,0.5,1.0"


def results_folder(args):
    """Where the results go: --out or the run's eval/ folder; results already there need --overwrite."""
    out = Path(args.out) if args.out else default_out(args.checkpoint)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the table, grids and images")
    if (out / "results.json").exists() and not args.overwrite:
        raise UserError(f"{out} holds the results of an earlier evaluation; add --overwrite, or give another --out")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise UserError(f"cannot write into {out}; give a writable folder with --out")
    return out


def image_writer(args, scale, set_name, names, out):
    """The per-image callback of one set: grids of its first images, and the upscales with --save-images."""

    def write(i, hr, lr, upscales):
        stem = Path(names[i]).stem
        if i < args.grid:
            save_rescale_grid(hr, lr, upscales, scale, out / "grids" / f"{file_name(set_name)}_{stem}.png")
        if args.save_images:
            for label, sr in upscales.items():
                save_png(sr, out / "images" / file_name(set_name) / file_name(label) / f"{stem}.png")

    return write


def load_model(args):
    model = engine.load(args.checkpoint, device=args.device)
    if args.scale and args.scale != model.scale:
        raise UserError(
            f"{args.checkpoint} is an x{model.scale} model, not x{args.scale}; "
            f"drop --scale or pick an x{args.scale} checkpoint"
        )
    return model


def read_sets(args, scale, console):
    """The --data sets, said where they were found; without --data, the embedded held-out images."""
    sets, found_line = load_sets(args.data, scale, min_size=metrics.smallest_side(scale))
    if sets:
        console.print(found_line, markup=False, highlight=False, soft_wrap=True)
    return sets or [EvalSet(EMBEDDED_SET, None, None, image_files.embedded("held_out"), "")]


def score_set(args, model, s, settings, out, console):
    """One set's entry in results.json: its scores, image count, folder and the paper's cell."""
    found = s.found
    if found.skipped:
        console.print(f"[yellow]{escape(s.name)}: skipped {escape(image_files.describe_skipped(found.skipped))}")
    write = image_writer(args, model.scale, s.name, found.names, out)
    scores = evaluate_set(model, found.images, settings, args.device, write)
    return {
        **scores,
        "images": len(found.images),
        "folder": str(s.folder) if s.folder else None,
        "paper": paper.compare(s.paper_set, model.scale, scores["settings"]),
    }


@cli
def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = results_folder(args)  # before any work: a folder that cannot take the results says so first
    model = load_model(args)
    console = terminal.console()
    sets = read_sets(args, model.scale, console)
    settings = z_settings(args.z, args.temperatures, args.samples)
    results = {s.name: score_set(args, model, s, settings, out, console) for s in sets}
    rows = table_rows(results, [label for label, _, _ in settings])
    note = paper.note([s.paper_set for s in sets], model.scale, rows.columns)
    console.print(table(rows, table_title(args.checkpoint, model.scale, rows.with_paper), note))
    summary = {"checkpoint": str(args.checkpoint), "scale": model.scale, "results": results}
    if rows.with_paper:
        summary["paper"] = paper.about()
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "results.md").write_text(markdown(rows, note))
    grids = f", grids in {out / 'grids'}" if args.grid else ""
    console.print(f"saved {out / 'results.json'}, {out / 'results.md'}{grids}")


if __name__ == "__main__":
    main()
