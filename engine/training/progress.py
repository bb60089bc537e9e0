"""What the trainer shows: a rich progress bar while it runs and a one-screen summary at the end."""

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from profiling import records
from profiling.stats import first_last_min

console = Console(stderr=True, soft_wrap=True)  # the trainer's messages: each one line, however long


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
        rate = f"{1 / record['step_s']:.2f} it/s" if record["step_s"] > 0 else "- it/s"
        self.progress.update(self.task, completed=step, loss=loss, lr=f"{record['lr']:.2e}", rate=rate)


def summary(console, folder, cfg, start, end, seconds, stopped):
    """One screen: what ran, how fast, how the loss moved, the last validation, and what to run next."""
    metrics = records.read_jsonl(folder / records.METRICS)
    losses = [r["loss"] for r in metrics if start <= r["step"] < end and "loss" in r]
    vals = [r for r in metrics if "val_psnr_y" in r]
    events = records.read_jsonl(folder / records.EXPLOSIONS)
    table = Table(title=f"run {folder.name}", show_header=False, box=None)
    table.add_row("steps", f"{start} -> {end} of {cfg.steps}" + (f" (stopped: {stopped})" if stopped else ""))
    rate = (end - start) / max(seconds, 1e-9)
    table.add_row("time", f"{seconds:.1f} s, {rate:.2f} it/s, {rate * cfg.batch_size:.1f} images/s")
    if losses:
        k = max(1, min(10, len(losses) // 4))
        moved = first_last_min(losses, k)
        table.add_row("loss", f"first {moved['first']:.2f} -> last {moved['last']:.2f} (mean of {k} steps)")
    if vals:
        v = vals[-1]
        scores = f"PSNR-Y {v['val_psnr_y']:.2f} dB, SSIM-Y {v['val_ssim_y']:.4f}, LR PSNR-Y {v['val_lr_psnr_y']:.2f} dB"
        table.add_row("validation", f"step {v['step'] + 1}: {scores}")
    table.add_row("explosions", f"{len(events)} recorded" + (f" (see {folder / 'explosions.jsonl'})" if events else ""))
    table.add_row("report", f"python -m profiling.report {folder}")
    console.print(table)
