"""PNG figures of a run folder: time per phase over the steps, GPU (or CPU) utilisation, losses."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from profiling import records  # noqa: E402  (after the backend is chosen)
from profiling.analysis import last_per_step  # noqa: E402  (after the backend is chosen)
from profiling.records import PHASES, read_jsonl  # noqa: E402  (after the backend is chosen)

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


def draw_phases(folder, ax):
    steps = last_per_step(read_jsonl(records.rank_file(folder, records.PHASES_STEM, 0)))
    if not steps:
        return False
    ax.stackplot([r["step"] for r in steps], *[[r.get(p, 0.0) for r in steps] for p in PHASES], labels=PHASES)
    ax.set(xlabel="step", ylabel="ms", title="time per step by phase")
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
