"""What the trainer shows: its one-line messages (kept in the run folder's train.log too), a rich progress bar
while it runs (and while it fills the data cache) and a one-screen summary at the end."""

import contextlib
import io
import re
import sys
import time
import warnings

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from engine import terminal
from profiling import records
from profiling.stats import counted, first_last_min


class Transcript(io.TextIOBase):
    """The trainer's console stream (stderr, looked up at each write, as pytest and redirections change it),
    copied into a log file as plain text once there is one; what was said before it is held and written
    first, so train.log starts with the start-up's lines. During a job, Python's warnings (torch's among them)
    come through it too, so the log keeps them beside the trainer's own lines."""

    ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
    PADDING = re.compile(r"[ \t]+(?=\n)")  # a table's cells padded out to the width of a console that is not a terminal

    def __init__(self):
        self.log, self.held, self.showwarning = None, None, None  # held: a job's lines before its log, or None

    def write(self, text):
        sys.stderr.write(text)
        plain = self.PADDING.sub("", self.ANSI.sub("", text))
        if self.log:
            self.log.write(plain)
        elif self.held is not None:
            self.held.append(plain)
        return len(text)

    def flush(self):
        sys.stderr.flush()

    def isatty(self):
        return sys.stderr.isatty()

    def begin(self):
        """A new job: nothing held from before it; warnings come through here until it ends."""
        self.end()
        self.held = []
        self.showwarning, warnings.showwarning = warnings.showwarning, self.warn

    def warn(self, message, category, filename, lineno, file=None, line=None):
        """warnings.showwarning for the job: a warning bound for stderr is written, and kept, as the console is."""
        if file is not None:  # a warning sent elsewhere on purpose
            return self.showwarning(message, category, filename, lineno, file, line)
        self.write(warnings.formatwarning(message, category, filename, lineno, line))

    def keep_in(self, path):
        """From now on copy into `path` (appended: each job of a run adds its lines), the held lines first."""
        self.log = open(path, "a", buffering=1)
        self.log.write("".join(self.held))
        self.held = []

    def log_only(self, line):
        """A line for the log alone (the console has said it another way)."""
        if self.log:
            self.log.write(line + "\n")

    def end(self):
        if self.log:
            self.log.close()
        self.log, self.held = None, None
        if self.showwarning is not None:
            warnings.showwarning, self.showwarning = self.showwarning, None


transcript = Transcript()
console = terminal.console(file=transcript)  # the trainer's messages: each one line, however long


def rank_log(ranks):
    """How the trainer says one line: rank 0 prints it; the other ranks, which take the same decisions, stay
    silent."""
    return console.print if ranks.main else _silent


def _silent(*args):
    pass


class TrainingProgress:
    """Step/total, it/s, ETA, loss and lr."""

    def __init__(self, total, start, enabled=True):
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}"),
            disable=not enabled,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, loss="-", lr="-", rate="- it/s")

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def update(self, step, record):
        loss = f"{record['loss']:.2f}" if "loss" in record else "skipped"
        rate = f"{1 / record['step_s']:.2f} it/s (last step)" if record["step_s"] > 0 else "- it/s"
        self.progress.update(self.task, completed=step, loss=loss, lr=f"{record['lr']:.2e}", rate=rate)


@contextlib.contextmanager
def images_cached(total):
    """A bar over the images a data-cache build makes, with their rate; yields the callback of each."""
    bar = Progress(
        TextColumn("[bold]data cache"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True,
        disable=not console.is_terminal,  # a job's log gets the line that follows the build, not the bar
    )  # fmt: skip
    task, start = bar.add_task("cache", total=total, rate="- images/s"), time.perf_counter()

    def made():
        bar.advance(task)
        done = bar.tasks[0].completed
        bar.update(task, rate=f"{done / (time.perf_counter() - start):.1f} images/s")

    with bar:
        yield made


def summary(console, folder, cfg, start, end, seconds, stopped):
    """One screen: what ran, how fast, how the loss moved, the last validation, and what to run next."""
    metrics = records.read_jsonl(folder / records.METRICS)
    losses = [r["loss"] for r in metrics if start < r["step"] <= end and "loss" in r]
    vals = [r for r in metrics if "val_psnr_y" in r]
    events = records.read_jsonl(folder / records.EXPLOSIONS)
    table = Table(title=f"run {folder.name}", show_header=False, box=None)
    table.add_row("steps", f"{start} -> {end} of {cfg.steps}" + (f" (stopped: {stopped})" if stopped else ""))
    rate = (end - start) / max(seconds, 1e-9)  # over the loop's wall time: not the report's steady-step throughput
    table.add_row(
        "time",
        f"{seconds:.1f} s in the loop, {rate:.2f} it/s and {rate * cfg.batch_size:.1f} images/s over it (warm-up, "
        "validation and checkpoints included; the report's throughput is the steady step's)",
    )
    if losses:
        k = max(1, min(10, len(losses) // 4))
        moved = first_last_min(losses, k)
        table.add_row("loss", f"first {moved['first']:.2f} -> last {moved['last']:.2f} (mean of {counted(k, 'step')})")
    if vals:
        v = vals[-1]
        scores = f"PSNR-Y {v['val_psnr_y']:.2f} dB, SSIM-Y {v['val_ssim_y']:.4f}, LR PSNR-Y {v['val_lr_psnr_y']:.2f} dB"
        table.add_row("validation", f"step {v['step']}: {scores}")
    table.add_row("explosions", f"{len(events)} recorded" + (f" (see {folder / 'explosions.jsonl'})" if events else ""))
    table.add_row("report", f"python -m profiling.report {folder}")
    console.print(table)
