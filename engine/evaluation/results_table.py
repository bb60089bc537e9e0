"""The evaluation's results table, as the terminal prints it and results.md holds it: PSNR-Y / SSIM-Y per set
and z setting (mean ± std over z samples) and, for the sets the paper reports, its numbers beside ours."""

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from engine.evaluation import paper


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
