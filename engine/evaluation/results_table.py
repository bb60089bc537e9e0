"""The evaluation's results tables, as the terminal prints them and results.md holds them: PSNR-Y / SSIM-Y per set
and z setting (mean ± std over z samples) and, for the sets the paper reports, its numbers beside ours; under
a codec, one table per codec with a column per quality and the published rows (jpeg_paper.py) beside ours."""

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from engine.evaluation import jpeg_paper, paper


def cell(s):
    """'PSNR / SSIM', with '± std' over z samples when there are several."""

    def spread(key, digits):
        return f" ± {s[f'{key}_std']:.{digits}f}" if s["samples"] > 1 else ""

    return f"{s['psnr_y']:.2f}{spread('psnr_y', 2)} / {s['ssim_y']:.4f}{spread('ssim_y', 4)}"


@dataclass
class Rows:
    """The table as text, built once for both the printed table and results.md."""

    columns: list[str]  # the z settings' labels
    with_paper: bool  # whether the paper's two columns follow them (some set is one the paper reports)
    body: list[list[str]]  # per set: its name, images, LR PSNR-Y, a cell per z setting[, the paper's two]

    def head(self, unit=""):
        """The column titles; results.md has no title above it, so it gives the cells' `unit` after each z setting."""
        paper_columns = paper.COLUMNS if self.with_paper else ()
        return ["data", "images", "LR PSNR-Y vs bicubic", *(c + unit for c in self.columns), *paper_columns]


def table_rows(results, columns):
    """One row per set, in results' order; the paper's two columns only when some set has the paper's numbers."""
    with_paper = any(r["paper"] for r in results.values())
    body = [
        [
            name,
            str(r["images"]),
            f"{r['lr_psnr_y']:.2f}",
            *(cell(r["settings"][c]) for c in columns),
            *(paper.cells(r["paper"]) if with_paper else ()),
        ]
        for name, r in results.items()
    ]
    return Rows(columns, with_paper, body)


def markdown(rows, note=""):
    head = rows.head(unit=" PSNR-Y / SSIM-Y")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows.body]
    return "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")


def table(rows, title, note=""):
    out = Table(title=title, caption=note or None)
    for i, col in enumerate(rows.head()):
        out.add_column(col, justify="left" if i == 0 else "right")  # set names left, numbers right
    for row in rows.body:
        out.add_row(*row)
    return out


def table_title(checkpoint, scale, with_paper):
    title = f"x{scale} {Path(checkpoint).name}: PSNR-Y (dB) / SSIM-Y, border {scale} px cropped"
    return title + (f"; the paper's (sampled z) beside {paper.COMPARED_WITH}" if with_paper else "")


@dataclass
class CodecRows:
    """A codec's table as text: per set, a row per z setting, the bpp and received PSNR-Y rows, and the published
    rows with our differences from them; a column per quality."""

    codec: str
    qualities: list[int]
    body: list[list[str]]

    def head(self, unit=""):
        return ["data", "images", "row", *(f"{self.codec.upper()} {q}" for q in self.qualities)]


def codec_rows(results, codec_name, qualities, labels):
    """The rows of one codec's table over every set of `results` (engine/evaluate.py's results.json entries)."""
    body = []
    for name, r in results.items():
        entry = r["codecs"][codec_name]
        per_quality = [entry["qualities"][q] for q in qualities]
        rows = [[label, *(cell(s["settings"][label]) for s in per_quality)] for label in labels]
        rows.append(["bpp", *(f"{s['bpp']:.3f}" for s in per_quality)])
        rows.append(["received LR PSNR-Y", *(f"{s['received_psnr_y']:.2f}" for s in per_quality)])
        for method, cells in (entry["published"] or {}).items():
            rows.append([f"{method} (published)", *published_cells(cells, qualities)])
            rows.append([f"{jpeg_paper.COMPARED_WITH} − {method}", *difference_cells(cells, qualities)])
        body += [[name if i == 0 else "", str(r["images"]) if i == 0 else "", *row] for i, row in enumerate(rows)]
    return CodecRows(codec_name, list(qualities), body)


def published_cells(cells, qualities):
    return [f"{cells[q]['psnr_y']:.2f} / {cells[q]['ssim_y']:.4f}" if q in cells else "—" for q in qualities]


def difference_cells(cells, qualities):
    def shown(d):
        return f"{d['psnr_y']:+.2f} / {d['ssim_y']:+.4f}" if d else "—"

    return [shown(cells[q]["difference"]) if q in cells else "—" for q in qualities]


def codec_title(checkpoint, scale, codec_name, crm):
    restored = " + CRM" if crm else ""
    return (
        f"x{scale} {Path(checkpoint).name} under {codec_name.upper()}{restored}: PSNR-Y (dB) / SSIM-Y, "
        f"border {scale} px cropped; bpp = the LR's encoded bits per HR pixel"
    )
