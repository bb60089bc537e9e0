"""An evaluation's results: every set scored, losslessly (scoring.py) or under codecs (compression.py), its
table printed, and what results.json and results.md hold; grids and upscaled images written as it goes.
`python -m engine.evaluate` (engine/evaluate.py) is the command."""

import re
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from engine.data import image_files
from engine.data.image_files import save_png
from engine.evaluation import jpeg_paper, metrics, paper
from engine.evaluation.benchmark_sets import EvalSet, load_sets
from engine.evaluation.compression import CompressedRescaler, score_qualities, summarise_qualities
from engine.evaluation.grids import save_rescale_grid
from engine.evaluation.results_table import codec_rows, codec_title, markdown, table, table_rows, table_title
from engine.evaluation.scoring import evaluate_set

EMBEDDED_SET = "held-out (embedded)"


def file_name(label):
    """A set name or column label as a shell-friendly file name: 'held-out (embedded)' -> 'held-out-embedded'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-")


@dataclass(frozen=True)
class Evaluation:
    """What is evaluated and where its results go: the checkpoint's name (for titles), the device, the
    folder, grids of each set's first `grid` images, every upscale with `save_images`, and the console."""

    checkpoint: str
    device: object
    out: Path
    grid: int
    save_images: bool
    console: object

    def image_writer(self, scale, set_name, names):
        """The per-image callback of one set: grids of its first images, and the upscales with save_images.
        Under a codec (`channel`: 'jpeg90', say, and the grid's caption of the LR) each quality has its own."""

        def write(i, hr, lr, upscales, channel=None, lr_label="IRN LR"):
            stem, tag = Path(names[i]).stem, f"_{channel}" if channel else ""
            if i < self.grid:
                grid = self.out / "grids" / f"{file_name(set_name)}_{stem}{tag}.png"
                save_rescale_grid(hr, lr, upscales, scale, grid, lr_label=lr_label)
            if self.save_images:
                folder = self.out / "images" / file_name(set_name) / (channel or "")
                for label, sr in upscales.items():
                    save_png(sr, folder / file_name(label) / f"{stem}.png")

        return write

    def said_skipped(self, s):
        if s.found.skipped:
            skipped = image_files.describe_skipped(s.found.skipped)
            self.console.print(f"[yellow]{escape(s.name)}: skipped {escape(skipped)}")


def read_sets(folders, scale, console):
    """The --data sets, said where they were found; without any, the embedded held-out images."""
    sets, found_line = load_sets(folders, scale, min_size=metrics.smallest_side(scale))
    if sets:
        console.print(found_line, markup=False, highlight=False, soft_wrap=True)
    return sets or [EvalSet(EMBEDDED_SET, None, None, image_files.embedded("held_out"), "")]


def lossless(run, model, sets, settings):
    """(results.json's summary, results.md) of the paper's lossless evaluation, its table printed."""
    results = {s.name: score_set(run, model, s, settings) for s in sets}
    rows = table_rows(results, [label for label, _, _ in settings])
    note = paper.note([s.paper_set for s in sets], model.scale, rows.columns)
    run.console.print(table(rows, table_title(run.checkpoint, model.scale, rows.with_paper), note))
    summary = {"checkpoint": run.checkpoint, "scale": model.scale, "results": results}
    if rows.with_paper:
        summary["paper"] = paper.about()
    return summary, markdown(rows, note)


def score_set(run, model, s, settings):
    """One set's entry in results.json: its scores, image count, folder and the paper's cell."""
    run.said_skipped(s)
    write = run.image_writer(model.scale, s.name, s.found.names)
    scores = evaluate_set(model, s.found.images, settings, run.device, write)
    return {
        **scores,
        "images": len(s.found.images),
        "folder": str(s.folder) if s.folder else None,
        "paper": paper.compare(s.paper_set, model.scale, scores["settings"]),
    }


def under_codecs(run, irn, restorer, codecs, sets, settings, crm_name):
    """(results.json's summary, results.md) of the evaluation under `codecs` ({name: qualities}), a table per
    codec printed; `crm_name` names the restorer, if any."""
    pipelines = {name: CompressedRescaler(irn, name, qualities[0], restorer) for name, qualities in codecs.items()}
    results = {s.name: score_set_under_codecs(run, pipelines, codecs, s, settings) for s in sets}
    labels, texts, published = [label for label, _, _ in settings], [], False
    for name, qualities in codecs.items():
        rows = codec_rows(results, name, qualities, labels)
        with_published = any(r["codecs"][name]["published"] for r in results.values())
        note = jpeg_paper.note(with_published, irn.scale, labels)
        title = codec_title(run.checkpoint, irn.scale, name, restorer is not None)
        run.console.print(table(rows, title, note))
        texts.append(f"{title}\n\n{markdown(rows, note)}")
        published |= with_published
    crm = crm_name if restorer is not None else None
    summary = {"checkpoint": run.checkpoint, "crm": crm, "scale": irn.scale, "results": results}
    if published:
        summary["published"] = jpeg_paper.about()
    return summary, "\n".join(texts)


def score_set_under_codecs(run, pipelines, codecs, s, settings):
    """One set's entry in results.json under every codec: per quality its scores, bpp and received PSNR-Y, and
    the published rows with our differences."""
    scale = next(iter(pipelines.values())).scale
    run.said_skipped(s)
    write = run.image_writer(scale, s.name, s.found.names)
    scored = {}
    for name, pipeline in pipelines.items():
        restored = " + CRM" if pipeline.crm is not None else ""

        def on_image(i, quality, hr, received, upscales, name=name, restored=restored):
            caption = f"{name.upper()} {quality}{restored} LR"
            write(i, hr, received, upscales, channel=f"{name}{quality}", lr_label=caption)

        rows = score_qualities(pipeline, s.found.images, codecs[name], settings, run.device, on_image)
        summaries = summarise_qualities(rows, codecs[name], settings)
        published = jpeg_paper.compare(s.paper_set, scale, name, summaries) if s.paper_set else None
        scored[name] = {"crm": pipeline.crm is not None, "qualities": summaries, "published": published}
    return {"images": len(s.found.images), "folder": str(s.folder) if s.folder else None, "codecs": scored}
