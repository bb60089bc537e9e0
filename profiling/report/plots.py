"""PNG figures of a run folder: time per phase over the steps, GPU (or CPU) utilisation, losses."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from profiling import records  # noqa: E402  (after the backend is chosen)
from profiling.records import STEP_PHASES, read_jsonl  # noqa: E402  (after the backend is chosen)
from profiling.report.analysis import last_per_step  # noqa: E402  (after the backend is chosen)
from profiling.stats import percentile  # noqa: E402  (after the backend is chosen)

LOSSES = ("loss", "forw_fit", "forw_ce", "back_rec")


def write_plots(folder):
    """Draw every figure the run's records allow into folder/plots/; returns the files written."""
    folder = Path(folder)
    out = folder / "plots"
    out.mkdir(exist_ok=True)
    written = []
    for name, draw in (("phases.png", draw_phases), ("utilisation.png", draw_utilisation), ("losses.png", draw_losses)):
        fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
        if draw(folder, ax):
            fig.tight_layout()
            fig.savefig(out / name)
            written.append(out / name)
        plt.close(fig)
    return written


def draw_phases(folder, ax, outlier_factor=3.0, labelled=5):
    """The training step's phases stacked per step (scheduled work left out). The y axis stops at
    `outlier_factor` x the p95 step time, so a few slow steps (warm-up, compilation, captures) do not
    flatten the rest; each step above it is marked at the top, the slowest with their true time."""
    steps = last_per_step(read_jsonl(records.rank_file(folder, records.PHASES_STEM, 0)))
    if not steps:
        return False
    x = [r["step"] for r in steps]
    ax.stackplot(x, *[[r.get(p, 0.0) for r in steps] for p in STEP_PHASES], labels=STEP_PHASES)
    totals = [sum(r.get(p, 0.0) for p in STEP_PHASES) for r in steps]
    top = outlier_factor * percentile(totals, 0.95)
    outliers = [(s, t) for s, t in zip(x, totals, strict=True) if t > top]
    if outliers:
        ax.set_ylim(0, top)
        ax.plot([s for s, _ in outliers], [top] * len(outliers), "v", color="black", ms=4, clip_on=False)
        for s, t in sorted(outliers, key=lambda o: -o[1])[:labelled]:
            ax.annotate(f"{t:.0f} ms", (s, top), textcoords="offset points", xytext=(0, 4), fontsize=7, ha="center")
    ax.set(xlabel="step", ylabel="ms", title="the training step by phase (scheduled work left out)")
    ax.legend(loc="upper right", fontsize=7, ncol=4)
    return True


def draw_utilisation(folder, ax):
    samples = read_jsonl(records.rank_file(folder, records.SAMPLES_STEM, 0))
    if not samples:
        return False
    key, label = ("util", "GPU utilisation %") if "util" in samples[0] else ("cpu_percent", "process CPU %")
    for device in sorted({s.get("gpu", 0) for s in samples}):
        points = [s for s in samples if s.get("gpu", 0) == device and key in s]
        name = f"gpu {device}" if key == "util" else None
        ax.plot([s["t"] for s in points], [s[key] for s in points], lw=0.8, label=name)
    ax.set(xlabel="seconds", ylabel=label, title=label + " over the run")
    return True


def draw_losses(folder, ax):
    trained = [r for r in last_per_step(read_jsonl(Path(folder) / records.METRICS)) if "loss" in r]
    if not trained:
        return False
    for key in LOSSES:
        ax.plot([r["step"] for r in trained], [r[key] for r in trained], lw=0.8, label=key)
    ax.set(xlabel="step", ylabel="loss", title="losses", yscale="log")
    ax.legend(fontsize=8)
    return True
