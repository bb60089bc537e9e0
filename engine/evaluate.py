"""Evaluation with the paper's conventions: HR -> downscale -> 8-bit LR -> upscale, PSNR/SSIM on Y.

    python -m engine.evaluate --checkpoint CKPT [--data Set5=DIR ...] [--z sample|zero] [--samples K]
                              [--temperature 0,0.5,0.8,1.0] [--grid N] [--save-images] [--out DIR]

Images are cropped to multiples of the scale, metrics use `scale` border pixels cropped (BasicSR's
crop_border) on the Y channel of 8-bit images. Sampled z is seeded per (sample, image): K samples
give mean +- std over samples. The table is printed and saved as JSON and Markdown.
"""
import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import engine
from engine import data, metrics
from engine.errors import UserError, cli
from engine.images import save_grid, save_png


def z_settings(z, temperatures, samples):
    """[(label, temperature, seeds)] for the table's columns."""
    if z == "zero":
        return [("z=0", 0.0, [0])]
    return [("z=0" if t == 0 else f"T={t:g}", t, [0] if t == 0 else list(range(samples))) for t in temperatures]


@torch.no_grad()
def evaluate_set(model, images, settings, device, keep=None):
    """Per setting, the mean metrics of each seed over the images; plus the LR's PSNR against bicubic.

    `keep(index, hr, lr, {label: sr of seed 0})` sees every image's results (for grids and files).
    """
    was_training = model.training
    model.eval()
    scale = model.scale
    per_seed = {label: {seed: [] for seed in seeds} for label, _, seeds in settings}
    lr_psnr = []
    for i, img in enumerate(images):
        hr = data.image_tensor(img, scale).to(device)
        lr, _ = model.downscale(hr)
        lr_psnr.append(metrics.psnr(lr, data.bicubic_down(hr, scale)).item())
        first = {}
        for label, temperature, seeds in settings:
            for seed in seeds:
                generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
                sr = model.upscale(lr, temperature=temperature, generator=generator)
                per_seed[label][seed].append(
                    {
                        "psnr_y": metrics.psnr(sr, hr, scale).item(),
                        "ssim_y": metrics.ssim(sr, hr, scale).item(),
                        "psnr_rgb": metrics.psnr(sr, hr, scale, y_channel=False).item(),
                    }
                )
                first.setdefault(label, sr)
        if keep:
            keep(i, hr, lr, first)
    model.train(was_training)
    return {"lr_psnr_y": statistics.fmean(lr_psnr) if lr_psnr else None, "settings": {label: summarise(seeds) for label, seeds in per_seed.items()}}


def summarise(seeds):
    """Mean over images per seed, then mean and std over seeds."""
    means = [{k: statistics.fmean(r[k] for r in rows) for k in rows[0]} for rows in seeds.values() if rows]
    out = {}
    for key in ("psnr_y", "ssim_y", "psnr_rgb"):
        values = [m[key] for m in means]
        out[key] = statistics.fmean(values) if values else None
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    out["samples"] = len(means)
    return out


def evaluate_images(model, images, device="cpu", keep=None):
    """The trainer's validation: metrics with sampled z (T = 1, seed 0), means over the images; `keep` also sees z = 0."""
    result = evaluate_set(model, images, z_settings("sample", [0.0, 1.0], 1), device, keep)
    row = result["settings"]["T=1"]
    return {"psnr_y": row["psnr_y"], "ssim_y": row["ssim_y"], "psnr_rgb": row["psnr_rgb"], "lr_psnr_y": result["lr_psnr_y"]}


def error_map(sr, hr, gain=8.0):
    """|SR - HR| per pixel (mean over RGB), amplified, as a grey image."""
    return ((sr - hr).abs().mean(1, keepdim=True) * gain).clamp(0, 1).expand(-1, 3, -1, -1)


def centre_crop(x, size):
    h, w = x.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return x[..., top : top + size, left : left + size]


def save_image_grid(hr, lr, srs, scale, path, crop=192):
    """HR | bicubic LR | IRN's LR | each upscale | error map of the last upscale, centre crops, captioned."""
    crop -= crop % scale
    bicubic = data.bicubic_down(hr, scale).clamp(0, 1)
    last = list(srs)[-1]
    tiles = [centre_crop(hr, crop), centre_crop(bicubic, crop // scale), centre_crop(lr, crop // scale)]
    tiles += [centre_crop(sr.clamp(0, 1), crop) for sr in srs.values()]
    tiles.append(centre_crop(error_map(srs[last], hr), crop))
    labels = ["HR", "bicubic LR", "IRN LR", *(f"up, {label}" for label in srs), f"|error| x8, {last}"]
    save_grid(tiles, labels, path)


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


def markdown(results, columns):
    lines = ["| data | images | LR PSNR-Y vs bicubic | " + " | ".join(f"{c} PSNR-Y / SSIM-Y" for c in columns) + " |"]
    lines.append("|" + "---|" * (3 + len(columns)))
    for name, r in results.items():
        cells = [cell(r["settings"][c]) for c in columns]
        lines.append(f"| {name} | {r['images']} | {r['lr_psnr_y']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cell(s):
    pm = lambda key, digits: f" ± {s[f'{key}_std']:.{digits}f}" if s["samples"] > 1 else ""
    return f"{s['psnr_y']:.2f}{pm('psnr_y', 2)} / {s['ssim_y']:.4f}{pm('ssim_y', 4)}"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m engine.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="this project's checkpoint or an official IRN .pth")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=DIR", help="a folder of HR images (repeatable)")
    parser.add_argument("--scale", type=int, help="refuse a checkpoint of another scale")
    parser.add_argument("--z", choices=("sample", "zero"), default="sample")
    parser.add_argument("--samples", type=int, default=1, help="z samples per image (mean ± std over samples)")
    parser.add_argument("--temperature", default="0,1.0", help="comma-separated temperatures of z, 0 meaning z = 0, e.g. 0,0.5,0.8,1.0")
    parser.add_argument("--grid", type=int, default=3, help="image grids for the first N images of each set")
    parser.add_argument("--save-images", action="store_true", help="write every upscaled image (seed 0)")
    parser.add_argument("--out", help="where the table, grids and images go (default: the run's eval/ folder)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        args.temperatures = [float(t) for t in args.temperature.split(",")]
    except ValueError:
        raise UserError(f"--temperature takes numbers like 0,0.5,1.0; got {args.temperature!r}") from None
    return args


@cli
def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    model = engine.load(args.checkpoint, device=args.device)
    if args.scale and args.scale != model.scale:
        raise UserError(f"{args.checkpoint} is an x{model.scale} model, not x{args.scale}; drop --scale or pick an x{args.scale} checkpoint")
    folders = parse_data(args.data)
    sets = {name: data.read_folder(folder, min_size=2 * model.scale) for name, folder in folders.items()} or {"held-out (embedded)": data.embedded("held_out")}
    settings = z_settings(args.z, args.temperatures, args.samples)
    out = Path(args.out) if args.out else default_out(args.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    results = {}
    for name, found in sets.items():
        def keep(i, hr, lr, srs, name=name, found=found):
            stem = Path(found.names[i]).stem
            if i < args.grid:
                save_image_grid(hr, lr, srs, model.scale, out / "grids" / f"{file_name(name)}_{stem}.png")
            if args.save_images:
                for label, sr in srs.items():
                    save_png(sr, out / "images" / file_name(name) / file_name(label) / f"{stem}.png")

        if found.skipped:
            console.print(f"[yellow]{name}: skipped {data.describe_skipped(found.skipped)}")
        results[name] = {**evaluate_set(model, found.images, settings, args.device, keep), "images": len(found.images)}
    columns = [label for label, _, _ in settings]
    table = Table(title=f"x{model.scale} {Path(args.checkpoint).name}: PSNR-Y (dB) / SSIM-Y, border {model.scale} px cropped")
    for col in ["data", "images", "LR PSNR-Y vs bicubic", *columns]:
        table.add_column(col, justify="right" if col != "data" else "left")
    for name, r in results.items():
        table.add_row(name, str(r["images"]), f"{r['lr_psnr_y']:.2f}", *[cell(r["settings"][c]) for c in columns])
    console.print(table)
    (out / "results.json").write_text(json.dumps({"checkpoint": str(args.checkpoint), "scale": model.scale, "results": results}, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results, columns))
    console.print(f"saved {out / 'results.json'}, {out / 'results.md'}" + (f", grids in {out / 'grids'}" if args.grid else ""))


if __name__ == "__main__":
    main()
