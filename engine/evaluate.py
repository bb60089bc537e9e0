"""Evaluate a checkpoint with the paper's conventions (engine/evaluation.py) and write the table.

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
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import engine
from engine import data, metrics, paper
from engine.errors import UserError, cli, parser
from engine.evaluation import evaluate_set, z_settings
from engine.grids import save_rescale_grid
from engine.images import save_png

EMBEDDED_SET = "held-out (embedded)"


HR_FOLDERS = ("HR", "GTmod12", "original")  # where a benchmark set keeps its HR images, first one found wins
SRF_FOLDER = re.compile(r"image_SRF_(\d+)", re.IGNORECASE)  # Huang et al.'s layout: *_HR.png beside *_LR.png
LR_FOLDER = re.compile(r"(.*_)?lr(_.*|bicx?\d+|x\d+|\d+)?|x\d+", re.IGNORECASE)  # LR_bicubic, LRbicx2, X4, ..._LR


def parse_data(specs):
    """['Set5=DIR', 'DIR'] -> [('Set5', Path(DIR)), (None, Path(DIR))]: the name, if one was given."""
    out = []
    for spec in specs:
        name, _, folder = spec.rpartition("=") if "=" in spec else ("", "", spec)
        out.append((name or None, Path(folder)))
    return out


def subfolders(folder):
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def is_set_folder(folder):
    """Whether `folder` is a benchmark set laid out with its HR images in a subfolder of their own."""
    names = {p.name.lower() for p in subfolders(folder)}
    return bool(names & {n.lower() for n in HR_FOLDERS}) or any(SRF_FOLDER.fullmatch(n) for n in names)


def find_sets(root):
    """The paper's sets among the folders under `root`, two levels deep: ({paper name: folder}, [ignored])."""
    found, ignored = {}, []
    for folder in subfolders(root):
        name = paper.set_name(folder.name)
        candidates = [(name, folder)] if name else [(paper.set_name(f.name), f) for f in subfolders(folder)]
        for name, path in candidates:
            if name in found:
                ignored.append(path)
            elif name:
                found[name] = path
    return {name: found[name] for name in paper.SETS if name in found}, ignored


def set_folder_name(folder):
    """The name a set's folder stands for: Set5/HR -> 'Set5' when the parent is a paper set, else the folder's."""
    inner = folder.name.lower() in {n.lower() for n in HR_FOLDERS} or SRF_FOLDER.fullmatch(folder.name)
    return folder.parent.name if inner and paper.set_name(folder.parent.name) else folder.name


def read_hr(folder, scale, min_size):
    """The HR images of one set's folder, never its LR ones: (the folder they came from, ImageSet, note)."""
    by_name = {p.name.lower(): p for p in subfolders(folder)}
    for name in HR_FOLDERS:
        if name.lower() in by_name:
            return by_name[name.lower()], data.read_folder(by_name[name.lower()], min_size), ""
    srf = {int(m[1]): p for p in subfolders(folder) if (m := SRF_FOLDER.fullmatch(p.name))}
    if srf:
        where = srf[max(srf, key=lambda k: (k == scale, k % scale == 0, -k))]  # cropped for this scale, best
        files = [p for p in sorted(where.iterdir()) if p.is_file() and p.stem.lower().endswith("_hr")]
        return where, read_files(where, files, min_size, "*_HR images"), "*_HR files"
    files = data.find_images(folder)
    hr = [f for f in files if not any(LR_FOLDER.fullmatch(part) for part in f.relative_to(folder).parts[:-1])]
    if len(hr) == len(files):
        return folder, data.read_folder(folder, min_size), ""  # a plain folder of images: every image under it
    return folder, read_files(folder, hr, min_size, "HR images"), f"{len(files) - len(hr)} files in LR folders left out"


def read_files(folder, files, min_size, what):
    images = [f for f in files if f.suffix.lower() in data.IMAGE_SUFFIXES]
    found = data.read_images(images, min_size)
    if not found.images:
        raise UserError(f"no usable {what} in {folder} ({data.describe_skipped(found.skipped)})")
    return found


@dataclass
class EvalSet:
    name: str  # the table's row
    paper_set: str | None  # the paper's name of the set, where it reports one
    folder: Path | None  # where its HR images were read (None: the embedded images)
    found: data.ImageSet
    note: str  # how they were picked, when not simply every image under the folder

    def describe(self, root=None):
        where = self.folder.relative_to(root) if root else self.folder
        return f"{self.name} in {where} ({len(self.found.images)} images{', ' + self.note if self.note else ''})"


def read_set(name, paper_set, folder, scale, min_size):
    return EvalSet(name, paper_set, *read_hr(folder, scale, min_size))


def load_sets(specs, scale, min_size):
    """The --data folders as the table's sets, and one line that says which sets were found where."""
    sets, said = [], []
    for label, folder in parse_data(specs):
        if not folder.is_dir():
            raise UserError(
                f"no folder at {folder}; give a folder of HR images (e.g. DIV2K/DIV2K_valid_HR) "
                "or a folder of benchmark sets (Set5/, Set14/, B100/, Urban100/, ...)"
            )
        found, ignored = ({}, []) if is_set_folder(folder) else find_sets(folder)
        if found:  # a folder of benchmark sets: one row per set the paper reports, under the paper's name
            new = [
                read_set(f"{label}/{name}" if label else name, name, path, scale, min_size)
                for name, path in found.items()
            ]
            line = f"{folder}: " + ", ".join(s.describe(folder) for s in new)
            missing = [name for name in paper.SETS if name not in found]
            line += f"; not found: {', '.join(missing)}" if missing else ""
            line += f"; not used: {', '.join(str(p.relative_to(folder)) for p in ignored)}" if ignored else ""
        else:  # one set: a benchmark set's folder or a plain folder of images
            own = set_folder_name(folder.resolve())
            paper_set = paper.set_name(label or own) or paper.set_name(own)
            new = [read_set(label or paper_set or own, paper_set, folder, scale, min_size)]
            line = new[0].describe()
        sets += new
        said.append(line)
    names = [s.name for s in sets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"two sets are named {', '.join(twice)}; name each one with --data NAME=DIR")
    return sets, "data: " + "; ".join(said)


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


PAPER_COLUMN = "paper PSNR-Y / SSIM-Y"
DIFF_COLUMN = f"{paper.COMPARED_WITH} − paper"


def paper_entry(paper_set, scale, settings):
    """The paper's cell of a set and our T=1 column's difference from it, or None where it reports none."""
    values = paper.reported(paper_set, scale) if paper_set else None
    if values is None:
        return None
    ours = settings.get(paper.COMPARED_WITH)
    diff = {"psnr_y": ours["psnr_y"] - values[0], "ssim_y": ours["ssim_y"] - values[1]} if ours else None
    return {
        "set": paper.set_name(paper_set),
        "psnr_y": values[0],
        "ssim_y": values[1],
        "compared_with": paper.COMPARED_WITH if ours else None,
        "difference": diff,
    }


def paper_cells(r):
    """[the paper's 'PSNR / SSIM', ours minus the paper's], '—' where the paper or our T=1 has none."""
    p = r["paper"]
    if p is None:
        return ["—", "—"]
    d = p["difference"]
    return [f"{p['psnr_y']:.2f} / {p['ssim_y']:.4f}", f"{d['psnr_y']:+.2f} / {d['ssim_y']:+.4f}" if d else "—"]


def paper_note(sets, scale, columns):
    """What the paper's columns are, or why there are none; '' when no evaluated set is one the paper reports."""
    named = [s.paper_set for s in sets if s.paper_set]
    if not named:
        return ""
    if scale not in paper.RESULTS:
        return f"The paper reports {', '.join(dict.fromkeys(named))} at x2 and x4 only, none at x{scale}."
    note = (
        f"Paper: IRN in {paper.SOURCE}, with z sampled from N(0, 1) (the official test), so it stands beside "
        f"our {paper.COMPARED_WITH} column; difference = ours − paper."
    )
    if paper.COMPARED_WITH not in columns:
        note += (
            f" This evaluation has no {paper.COMPARED_WITH} column to compare (use --z sample with 1 in --temperature)."
        )
    return note


def markdown(results, columns, note=""):
    with_paper = any(r["paper"] for r in results.values())
    extra = [PAPER_COLUMN, DIFF_COLUMN] if with_paper else []
    head = ["data", "images", "LR PSNR-Y vs bicubic", *(f"{c} PSNR-Y / SSIM-Y" for c in columns), *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [cell(r["settings"][c]) for c in columns] + (paper_cells(r) if with_paper else [])
        lines.append(f"| {name} | {r['images']} | {r['lr_psnr_y']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")


def table(results, columns, title, note=""):
    with_paper = any(r["paper"] for r in results.values())
    out = Table(title=title, caption=note or None)
    for col in ["data", "images", "LR PSNR-Y vs bicubic", *columns, *([PAPER_COLUMN, DIFF_COLUMN] * with_paper)]:
        out.add_column(col, justify="right" if col != "data" else "left")
    for name, r in results.items():
        cells = [cell(r["settings"][c]) for c in columns] + (paper_cells(r) if with_paper else [])
        out.add_row(name, str(r["images"]), f"{r['lr_psnr_y']:.2f}", *cells)
    return out


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
    console = Console()
    sets, found_line = load_sets(args.data, model.scale, min_size=metrics.smallest_side(model.scale))
    if sets:
        console.print(found_line, markup=False, highlight=False, soft_wrap=True)
    sets = sets or [EvalSet(EMBEDDED_SET, None, None, data.embedded("held_out"), "")]
    settings = z_settings(args.z, args.temperatures, args.samples)
    out = Path(args.out) if args.out else default_out(args.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for s in sets:
        found = s.found
        if found.skipped:
            console.print(f"[yellow]{escape(s.name)}: skipped {escape(data.describe_skipped(found.skipped))}")
        write = image_writer(args, model.scale, s.name, found.names, out)
        scores = evaluate_set(model, found.images, settings, args.device, write)
        results[s.name] = {
            **scores,
            "images": len(found.images),
            "folder": str(s.folder) if s.folder else None,
            "paper": paper_entry(s.paper_set, model.scale, scores["settings"]),
        }
    columns = [label for label, _, _ in settings]
    note = paper_note(sets, model.scale, columns)
    title = f"x{model.scale} {Path(args.checkpoint).name}: PSNR-Y (dB) / SSIM-Y, border {model.scale} px cropped"
    if any(r["paper"] for r in results.values()):
        title += f"; the paper's (sampled z) beside {paper.COMPARED_WITH}"
    console.print(table(results, columns, title, note))
    summary = {"checkpoint": str(args.checkpoint), "scale": model.scale, "results": results}
    if any(r["paper"] for r in results.values()):
        summary["paper"] = {"source": paper.SOURCE, "z": "sampled from N(0, 1)", "compared_with": paper.COMPARED_WITH}
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results, columns, note))
    grids = f", grids in {out / 'grids'}" if args.grid else ""
    console.print(f"saved {out / 'results.json'}, {out / 'results.md'}{grids}")


if __name__ == "__main__":
    main()
