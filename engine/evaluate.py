"""Evaluate a checkpoint with the paper's conventions (engine/evaluation.py) and write the table.

    python -m engine.evaluate --checkpoint CKPT [--data Set5=DIR ...] [--z sample|zero] [--samples K]
                              [--temperature 0,0.5,0.8,1.0] [--grid N] [--save-images] [--out DIR]

The table (PSNR-Y / SSIM-Y per set and z setting, mean +- std over z samples) is printed and saved as
JSON and Markdown beside captioned grids of the first images.
"""

import json
import re
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import engine
from engine import data
from engine.errors import UserError, cli, parser
from engine.evaluation import evaluate_set, z_settings
from engine.grids import save_rescale_grid
from engine.images import save_png

EMBEDDED_SET = "held-out (embedded)"


def parse_data(specs):
    """['Set5=DIR', 'DIR'] -> {name: dir}."""
    out = {}
    for spec in specs:
        name, _, folder = spec.rpartition("=") if "=" in spec else (Path(spec).name, "", spec)
        out[name or Path(folder).name] = folder
    return out


def file_name(label):
    """A set name or column label as a shell-friendly file name: 'held-out (embedded)' -> 'held-out-embedded'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-")


def default_out(checkpoint):
    path = Path(checkpoint).resolve()
    return path.parent.parent / "eval" if path.parent.name == "checkpoints" else Path("eval")


def cell(s):
    """'PSNR / SSIM', with '± std' over z samples when there are several."""

    def spread(key, digits):
        return f" ± {s[f'{key}_std']:.{digits}f}" if s["samples"] > 1 else ""

    return f"{s['psnr_y']:.2f}{spread('psnr_y', 2)} / {s['ssim_y']:.4f}{spread('ssim_y', 4)}"


def markdown(results, columns):
    lines = ["| data | images | LR PSNR-Y vs bicubic | " + " | ".join(f"{c} PSNR-Y / SSIM-Y" for c in columns) + " |"]
    lines.append("|" + "---|" * (3 + len(columns)))
    for name, r in results.items():
        cells = [cell(r["settings"][c]) for c in columns]
        lines.append(f"| {name} | {r['images']} | {r['lr_psnr_y']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table(results, columns, title):
    out = Table(title=title)
    for col in ["data", "images", "LR PSNR-Y vs bicubic", *columns]:
        out.add_column(col, justify="right" if col != "data" else "left")
    for name, r in results.items():
        out.add_row(name, str(r["images"]), f"{r['lr_psnr_y']:.2f}", *[cell(r["settings"][c]) for c in columns])
    return out


def parse_args(argv):
    p = parser("python -m engine.evaluate", __doc__)
    p.add_argument("--checkpoint", required=True, help="this project's checkpoint or an official IRN .pth")
    p.add_argument("--data", action="append", default=[], metavar="NAME=DIR", help="a folder of HR images (repeatable)")
    p.add_argument("--scale", type=int, help="refuse a checkpoint of another scale")
    p.add_argument("--z", choices=("sample", "zero"), default="sample")
    p.add_argument("--samples", type=int, default=1, help="z samples per image (mean ± std over samples)")
    p.add_argument("--temperature", default="0,1.0", help="temperatures of z, 0 meaning z = 0, e.g. 0,0.5,0.8,1.0")
    p.add_argument("--grid", type=int, default=3, help="image grids for the first N images of each set")
    p.add_argument("--save-images", action="store_true", help="write every upscaled image (seed 0)")
    p.add_argument("--out", help="where the table, grids and images go (default: the run's eval/ folder)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        args.temperatures = [float(t) for t in args.temperature.split(",")]
    except ValueError:
        raise UserError(f"--temperature takes numbers like 0,0.5,1.0; got {args.temperature!r}") from None
    if args.samples < 1:
        raise UserError(f"--samples takes a count of at least 1; got {args.samples}")
    return args


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


@cli
def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    model = engine.load(args.checkpoint, device=args.device)
    if args.scale and args.scale != model.scale:
        raise UserError(
            f"{args.checkpoint} is an x{model.scale} model, not x{args.scale}; "
            f"drop --scale or pick an x{args.scale} checkpoint"
        )
    folders = parse_data(args.data)
    sets = {name: data.read_folder(folder, min_size=2 * model.scale) for name, folder in folders.items()}
    sets = sets or {EMBEDDED_SET: data.embedded("held_out")}
    settings = z_settings(args.z, args.temperatures, args.samples)
    out = Path(args.out) if args.out else default_out(args.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    results = {}
    for name, found in sets.items():
        if found.skipped:
            console.print(f"[yellow]{name}: skipped {data.describe_skipped(found.skipped)}")
        write = image_writer(args, model.scale, name, found.names, out)
        results[name] = {**evaluate_set(model, found.images, settings, args.device, write), "images": len(found.images)}
    columns = [label for label, _, _ in settings]
    title = f"x{model.scale} {Path(args.checkpoint).name}: PSNR-Y (dB) / SSIM-Y, border {model.scale} px cropped"
    console.print(table(results, columns, title))
    summary = {"checkpoint": str(args.checkpoint), "scale": model.scale, "results": results}
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results, columns))
    grids = f", grids in {out / 'grids'}" if args.grid else ""
    console.print(f"saved {out / 'results.json'}, {out / 'results.md'}{grids}")


if __name__ == "__main__":
    main()
