"""Evaluate a checkpoint with the paper's conventions (engine/evaluation/scoring.py) and write the table.

    python -m engine.evaluate --checkpoint CKPT [--data Set5=DIR ...] [--z sample|zero] [--samples K]
                              [--temperature 0,0.5,0.8,1.0] [--grid N] [--save-images] [--out DIR]
                              [--jpeg 30,50,70,80,90] [--webp 90] [--crm CRM]

--data takes a folder of HR images, a benchmark set's folder (its HR images in HR/, GTmod12/, original/
or image_SRF_N/*_HR.png beside the LR ones) or a folder of benchmark sets (e.g. benchmark/ with Set5/,
Set14/, B100/, Urban100/, DIV2K/DIV2K_valid_HR/): every set the paper reports becomes a row under its
paper name. The table (PSNR-Y / SSIM-Y per set and z setting, mean +- std over z samples; for the
paper's sets at x2 and x4 the paper's numbers, sampled z, beside the T=1 column with the difference) is
printed and saved as JSON and Markdown beside captioned grids of the first images.

--jpeg and --webp score HR -> down -> the codec at each quality -> [CRM] -> up instead
(engine/evaluation/compression.py): a table per codec, a column per quality, with the LR's encoded bits per
HR pixel and, for DIV2K val at x2 and x4 under JPEG, the published rows of SAIN's table beside ours
(engine/evaluation/jpeg_paper.py). The CRM is --crm's, or that of a CRM run's checkpoint, which holds its
frozen IRN too; without one, IRN alone meets the codec.
"""

import json
import math
import os
import re
import sys
from pathlib import Path

from rich.markup import escape

from engine import terminal
from engine.data import image_files
from engine.data.codec import CODECS
from engine.data.image_files import save_png
from engine.errors import UserError, cli, parser
from engine.evaluation import jpeg_paper, metrics, paper
from engine.evaluation.benchmark_sets import EvalSet, load_sets
from engine.evaluation.compression import CompressedRescaler, score_qualities, summarise_qualities
from engine.evaluation.grids import save_rescale_grid
from engine.evaluation.results_table import codec_rows, codec_title, markdown, table, table_rows, table_title
from engine.evaluation.scoring import evaluate_set, z_settings
from engine.model import execution
from engine.model.rescaler import load_with_crm
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
    for name in CODECS:
        p.add_argument(
            f"--{name}",
            type=flag_type(config.INTEGERS, quality_list),
            default=[],
            metavar="QUALITIES",
            help=f"score under {name.upper()} (Pillow) at these qualities instead of losslessly, e.g. 30,50,70,80,90",
        )
    p.add_argument("--crm", help="a CRM restoring the decoded LR before the upscale (the official .pth or a CRM run's)")
    p.add_argument("--device", default="auto", help=f"{execution.DEVICE_CHOICES} (default: auto)")
    args = p.parse_args(argv)
    args.device = execution.device_for(args.device)
    args.codecs = {name: getattr(args, name) for name in CODECS if getattr(args, name)}
    if args.crm and not args.codecs:
        raise UserError("--crm restores a compressed LR: add --jpeg or --webp with the qualities to score")
    return args


def temperatures(v, cfg):
    ok = isinstance(v, list) and v and all(math.isfinite(t) and t >= 0 for t in v)
    return None if ok else "comma-separated temperatures >= 0, like 0,0.5,1.0"


def quality_list(v, cfg):
    ok = isinstance(v, list) and v and not any(config.a_quality(q, cfg) for q in v) and len(set(v)) == len(v)
    return None if ok else "comma-separated qualities from 1 to 100, each once, like 30,50,70,80,90"


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
    """The per-image callback of one set: grids of its first images, and the upscales with --save-images.
    Under a codec (`channel`: 'jpeg90', say, and the grid's caption of the LR) each quality has its own."""

    def write(i, hr, lr, upscales, channel=None, lr_label="IRN LR"):
        stem, tag = Path(names[i]).stem, f"_{channel}" if channel else ""
        if i < args.grid:
            grid = out / "grids" / f"{file_name(set_name)}_{stem}{tag}.png"
            save_rescale_grid(hr, lr, upscales, scale, grid, lr_label=lr_label)
        if args.save_images:
            folder = out / "images" / file_name(set_name) / (channel or "")
            for label, sr in upscales.items():
                save_png(sr, folder / file_name(label) / f"{stem}.png")

    return write


def load_models(args):
    """(IRN, CRM or None) of --checkpoint and --crm."""
    irn, restorer = load_with_crm(args.checkpoint, args.crm, device=args.device)
    if restorer is not None and not args.codecs:
        raise UserError(f"{args.checkpoint} holds a CRM for compressed LRs: add --jpeg or --webp with the qualities")
    if args.scale and args.scale != irn.scale:
        raise UserError(
            f"{args.checkpoint} is an x{irn.scale} model, not x{args.scale}; "
            f"drop --scale or pick an x{args.scale} checkpoint"
        )
    return irn, restorer


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


def lossless_evaluation(args, model, sets, settings, out, console):
    """(results.json's summary, results.md) of the paper's lossless evaluation, its table printed."""
    results = {s.name: score_set(args, model, s, settings, out, console) for s in sets}
    rows = table_rows(results, [label for label, _, _ in settings])
    note = paper.note([s.paper_set for s in sets], model.scale, rows.columns)
    console.print(table(rows, table_title(args.checkpoint, model.scale, rows.with_paper), note))
    summary = {"checkpoint": str(args.checkpoint), "scale": model.scale, "results": results}
    if rows.with_paper:
        summary["paper"] = paper.about()
    return summary, markdown(rows, note)


def score_set_under_codecs(args, pipelines, s, settings, out, console):
    """One set's entry in results.json under every codec: per quality its scores, bpp and received PSNR-Y, and
    the published rows with our differences."""
    found, scale = s.found, next(iter(pipelines.values())).scale
    if found.skipped:
        console.print(f"[yellow]{escape(s.name)}: skipped {escape(image_files.describe_skipped(found.skipped))}")
    write = image_writer(args, scale, s.name, found.names, out)
    codecs = {}
    for name, pipeline in pipelines.items():
        restored = " + CRM" if pipeline.crm is not None else ""

        def on_image(i, quality, hr, received, upscales, name=name, restored=restored):
            caption = f"{name.upper()} {quality}{restored} LR"
            write(i, hr, received, upscales, channel=f"{name}{quality}", lr_label=caption)

        rows = score_qualities(pipeline, found.images, args.codecs[name], settings, args.device, on_image)
        summaries = summarise_qualities(rows, args.codecs[name], settings)
        published = jpeg_paper.compare(s.paper_set, scale, name, summaries) if s.paper_set else None
        codecs[name] = {"crm": pipeline.crm is not None, "qualities": summaries, "published": published}
    return {"images": len(found.images), "folder": str(s.folder) if s.folder else None, "codecs": codecs}


def codec_evaluation(args, irn, restorer, sets, settings, out, console):
    """(results.json's summary, results.md) of the evaluation under --jpeg / --webp, a table per codec printed."""
    pipelines = {name: CompressedRescaler(irn, name, qualities[0], restorer) for name, qualities in args.codecs.items()}
    results = {s.name: score_set_under_codecs(args, pipelines, s, settings, out, console) for s in sets}
    labels, texts, published = [label for label, _, _ in settings], [], False
    for name, qualities in args.codecs.items():
        rows = codec_rows(results, name, qualities, labels)
        with_published = any(r["codecs"][name]["published"] for r in results.values())
        note = jpeg_paper.note(with_published, irn.scale, labels)
        title = codec_title(args.checkpoint, irn.scale, name, restorer is not None)
        console.print(table(rows, title, note))
        texts.append(f"{title}\n\n{markdown(rows, note)}")
        published |= with_published
    crm = str(args.crm or args.checkpoint) if restorer is not None else None  # --crm's, or the CRM run's own
    summary = {"checkpoint": str(args.checkpoint), "crm": crm, "scale": irn.scale, "results": results}
    if published:
        summary["published"] = jpeg_paper.about()
    return summary, "\n".join(texts)


@cli
def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = results_folder(args)  # before any work: a folder that cannot take the results says so first
    irn, restorer = load_models(args)
    console = terminal.console()
    sets = read_sets(args, irn.scale, console)
    settings = z_settings(args.z, args.temperatures, args.samples)
    if args.codecs:
        summary, text = codec_evaluation(args, irn, restorer, sets, settings, out, console)
    else:
        summary, text = lossless_evaluation(args, irn, sets, settings, out, console)
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "results.md").write_text(text)
    grids = f", grids in {out / 'grids'}" if args.grid else ""
    console.print(f"saved {out / 'results.json'}, {out / 'results.md'}{grids}")


if __name__ == "__main__":
    main()
