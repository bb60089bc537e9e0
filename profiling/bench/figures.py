"""What every bench shares: a titled table of figures (printed, or written as Markdown), timing by median, and the
shape and device in words."""

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.table import Table

from engine import terminal

console = terminal.console()
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Figures:
    """One bench's result: a titled table with notes, printed in the terminal or written as Markdown."""

    title: str
    columns: list
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    records: list = field(default_factory=list)  # the raw measurements behind the rows, where a bench keeps them

    def to_json(self):
        return asdict(self)

    def table(self):
        table = Table(title=self.title)
        for i, col in enumerate(self.columns):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in self.rows:
            table.add_row(*row)
        return table

    def markdown(self):
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines + [""] + [f"{note}  " for note in self.notes]) + "\n"

    def show(self):
        console.print(self.table())
        for note in self.notes:
            console.print(note)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup=3, repeats=20):
    """Median milliseconds of fn() over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def shape(args):
    return f"x{args.scale}, batch {args.batch}, {args.crop}x{args.crop}"


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
