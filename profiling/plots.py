"""PNG figures of a run: phase breakdown over time, GPU (or CPU) utilisation, losses."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from engine.rundir import read_jsonl  # noqa: E402
from profiling.analysis import last_per_step  # noqa: E402
from profiling.timer import PHASES  # noqa: E402


def write_plots(folder):
    folder = Path(folder)
    out = folder / "plots"
    out.mkdir(exist_ok=True)
    written = []
    for name, draw in (("phases.png", _phases), ("utilisation.png", _utilisation), ("losses.png", _losses)):
        fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
        if draw(folder, ax):
            fig.tight_layout()
            fig.savefig(out / name)
            written.append(out / name)
        plt.close(fig)
    return written


def _phases(folder, ax):
    records = last_per_step(read_jsonl(folder / "phases.jsonl"))
    if not records:
        return False
    steps = [r["step"] for r in records]
    ax.stackplot(steps, *[[r.get(p, 0.0) for r in records] for p in PHASES], labels=PHASES)
    ax.set(xlabel="step", ylabel="ms", title="time per step by phase")
    ax.legend(loc="upper right", fontsize=7, ncol=4)
    return True


def _utilisation(folder, ax):
    samples = read_jsonl(folder / "gpu.jsonl")
    if not samples:
        return False
    key, label = ("util", "GPU utilisation %") if "util" in samples[0] else ("cpu_percent", "process CPU %")
    for device in sorted({s.get("gpu", 0) for s in samples}):
        pts = [s for s in samples if s.get("gpu", 0) == device and key in s]
        ax.plot([s["t"] for s in pts], [s[key] for s in pts], lw=0.8, label=f"gpu {device}" if key == "util" else None)
    ax.set(xlabel="seconds", ylabel=label, title=label + " over the run")
    return True


def _losses(folder, ax):
    records = [r for r in last_per_step(read_jsonl(folder / "metrics.jsonl")) if "loss" in r]
    if not records:
        return False
    steps = [r["step"] for r in records]
    for key in ("loss", "forw_fit", "forw_ce", "back_rec"):
        ax.plot(steps, [r[key] for r in records], lw=0.8, label=key)
    ax.set(xlabel="step", ylabel="loss", title="losses", yscale="log")
    ax.legend(fontsize=8)
    return True
