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
import sys
from pathlib import Path

from engine import terminal
from engine.data.codec import CODECS
from engine.errors import UserError, cli, parser
from engine.evaluation import results
from engine.evaluation.scoring import z_settings
from engine.model import execution
from engine.model.rescaler import load_with_crm
from engine.training import config
from engine.training.config import flag_type


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


@cli
def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = results_folder(args)  # before any work: a folder that cannot take the results says so first
    irn, restorer = load_models(args)
    console = terminal.console()
    run = results.Evaluation(str(args.checkpoint), args.device, out, args.grid, args.save_images, console)
    sets = results.read_sets(args.data, irn.scale, console)
    settings = z_settings(args.z, args.temperatures, args.samples)
    if args.codecs:
        crm_name = str(args.crm or args.checkpoint)  # --crm's, or the CRM run's own
        summary, text = results.under_codecs(run, irn, restorer, args.codecs, sets, settings, crm_name)
    else:
        summary, text = results.lossless(run, irn, sets, settings)
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "results.md").write_text(text)
    grids = f", grids in {out / 'grids'}" if args.grid else ""
    console.print(f"saved {out / 'results.json'}, {out / 'results.md'}{grids}")


if __name__ == "__main__":
    main()
