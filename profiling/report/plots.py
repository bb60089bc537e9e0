"""PNG figures of a run folder, drawn to be looked at rather than read:

- losses.png: each loss smoothed (a running median), the raw values faint behind it, explosions marked; the
  validation PSNR-Y over the steps; the learning rate (from 0) and the grad norm before clipping, with the clip.
- phases.png: each phase of the training step on its own scale (small phases stay visible), with its share of the
  steady steps, as the report's phase table gives it.
- utilisation.png: GPU utilisation (or the process's CPU, where 100% is one core) and memory (from 0) over the
  run, with the validations and checkpoints marked.
"""

from bisect import bisect_left
from pathlib import Path
from statistics import median

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from profiling import records  # noqa: E402  (after the backend is chosen)
from profiling.records import STEP_PHASES, read_jsonl  # noqa: E402  (after the backend is chosen)
from profiling.report.analysis import last_per_step, phase_stats, steady  # noqa: E402  (after the backend is chosen)
from profiling.stats import counted, percentile  # noqa: E402  (after the backend is chosen)

LOSSES = ("loss", "forw_fit", "forw_ce", "back_rec")
SMOOTHING = 0.05  # the running median spans this share of the steps shown (at least 1 step)


def write_plots(folder):
    """Draw every figure the run's records allow into folder/plots/; returns the files written."""
    folder = Path(folder)
    out = folder / "plots"
    out.mkdir(exist_ok=True)
    written = []
    for name, (draw, size) in FIGURES.items():
        fig = plt.figure(figsize=size, dpi=100)
        if draw(folder, fig):
            fig.tight_layout()
            fig.savefig(out / name)
            written.append(out / name)
        plt.close(fig)
    return written


def running_median(values, width):
    """The median of each value and the `width` - 1 before it: a smoothing that a spike does not drag along."""
    return [median(values[max(0, i - width + 1) : i + 1]) for i in range(len(values))]


def draw_losses(folder, fig):
    metrics = last_per_step(read_jsonl(Path(folder) / records.METRICS))
    clip = records.read_config(folder).get("grad_clip")
    trained = [r for r in metrics if "loss" in r]
    if not trained:
        return False
    steps = [r["step"] for r in trained]
    width = max(1, round(SMOOTHING * len(trained)))
    explosions = [e["step"] for e in read_jsonl(Path(folder) / records.EXPLOSIONS)]
    losses, validation, optimiser = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 2, 3), fig.add_subplot(2, 2, 4)
    for key in LOSSES:
        values = [r[key] for r in trained]
        (raw,) = losses.plot(steps, values, lw=0.6, alpha=0.25)
        losses.plot(steps, running_median(values, width), lw=1.6, color=raw.get_color(), label=key)
    for step in explosions:
        losses.axvline(step, color="red", lw=0.6, alpha=0.5)
    title = f"losses (running median of {counted(width, 'step')} over the raw values)"
    if explosions:
        title += f"; red: {len(explosions)} recorded explosions"
    losses.set(xlabel="step", ylabel="loss (log)", yscale="log", title=title)
    losses.legend(fontsize=8, ncol=4)
    scored = [r for r in metrics if "val_psnr_y" in r]
    if scored:
        validation.plot([r["step"] for r in scored], [r["val_psnr_y"] for r in scored], "o-", ms=3)
    validation.set(xlabel="step", ylabel="PSNR-Y (dB)", title="validation PSNR-Y" if scored else "no validation")
    optimiser.plot(steps, [r["lr"] for r in trained], color="black", lw=1.2, label="lr")
    optimiser.set(xlabel="step", ylabel="learning rate", title="learning rate and grad norm (before clipping)")
    optimiser.set_ylim(bottom=0)  # the schedule's steps down, in proportion
    norms = [(r["step"], r["grad_norm"]) for r in trained if r.get("grad_norm") is not None]
    grad = optimiser.twinx()
    grad.plot([s for s, _ in norms], [n for _, n in norms], color="tab:purple", lw=0.6, alpha=0.7)
    grad.set(ylabel="grad norm (log)", yscale="log")
    if clip:
        grad.axhline(clip, color="tab:purple", ls="--", lw=0.8, label=f"clip {clip:g}")
        grad.legend(fontsize=7, loc="upper right")
    grad.yaxis.label.set_color("tab:purple")
    for step in explosions:
        grad.axvline(step, color="red", lw=0.6, alpha=0.5)
    return True


def draw_phases(folder, fig, outlier_factor=3.0, labelled=1):
    """One panel per phase of the training step (scheduled work left out), each on its own scale, titled with
    its share of the step. A panel's y axis stops at `outlier_factor` x its p95, so a few slow steps (warm-up,
    compilation, captures) do not flatten the rest; those above it are marked at the top with their times."""
    steps = last_per_step(read_jsonl(records.rank_file(folder, records.PHASES_STEM, 0)))
    if not steps:
        return False
    x = [r["step"] for r in steps]
    starts = sorted({env.get("start_step", 0) for env in records.read_envs(folder)}) or [0]
    shares = phase_stats(steady(steps, starts))["phases"]  # the report's: warm-up and captured steps left out
    phases = [p for p in STEP_PHASES if any(r.get(p) for r in steps)]  # a phase this run never ran has no panel
    columns = 4
    for i, phase in enumerate(phases):
        ax = fig.add_subplot(-(-len(phases) // columns), columns, i + 1)
        values = [r.get(phase, 0.0) for r in steps]
        ax.plot(x, values, lw=0.8)
        top = outlier_factor * percentile(values, 0.95)
        outliers = [(s, v) for s, v in zip(x, values, strict=True) if v > top > 0]
        if outliers:
            ax.set_ylim(0, top)
            ax.plot([s for s, _ in outliers], [top] * len(outliers), "v", color="black", ms=3, clip_on=False)
            for s, v in sorted(outliers, key=lambda o: -o[1])[:labelled]:
                ax.annotate(f"{v:.0f} ms", (s, top), textcoords="offset points", xytext=(4, -8), fontsize=6)
        ax.set_title(f"{phase}: {shares[phase]['share']:.1%} of the steady step", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("ms", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("the training step by phase (scheduled work left out), each on its own scale", fontsize=10)
    return True


def draw_utilisation(folder, fig):
    samples = read_jsonl(records.rank_file(folder, records.SAMPLES_STEM, 0))
    if not samples:
        return False
    gpu = "util" in samples[0]
    busy, memory = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    key, label = ("util", "GPU utilisation %") if gpu else ("cpu_percent", "process CPU % (100% = one core)")
    used = ("mem_used_mib", "GPU memory used (GiB)") if gpu else ("rss_mib", "process resident memory (GiB)")
    for device in sorted({s.get("gpu", 0) for s in samples}):
        points = [s for s in samples if s.get("gpu", 0) == device and key in s]
        name = f"gpu {device}" if gpu else None
        busy.plot([s["t"] for s in points], [s[key] for s in points], lw=0.8, label=name)
        memory.plot([s["t"] for s in points], [(s[used[0]] or 0) / 1024 for s in points], lw=0.8, label=name)
    busy.set(xlabel="seconds", ylabel=label, title=label + " over the run")
    memory.set(xlabel="seconds", ylabel=used[1], title=used[1] + " over the run")
    memory.set_ylim(bottom=0)
    steps = last_per_step(read_jsonl(records.rank_file(folder, records.PHASES_STEM, 0)))
    for ax in (busy, memory):
        mark_scheduled_work(ax, steps, samples)
    return True


SCHEDULED_COLOURS = {"validation": "tab:green", "checkpoint": "tab:grey"}


def mark_scheduled_work(ax, steps, samples):
    """Shade each validation and checkpoint where it ran, on the samples' seconds (t), which run with their
    clock: a clock maps to seconds through the first sample taken at or after it."""
    timed = sorted((s["clock"], s["t"]) for s in samples if "clock" in s)
    if not timed:
        return
    clocks = [clock for clock, _ in timed]

    def seconds(clock):
        clock_there, t_there = timed[min(bisect_left(clocks, clock), len(timed) - 1)]
        return t_there + clock - clock_there

    labelled = set()
    for work, start, end in (span for r in steps if "clock" in r for span in scheduled_spans(r)):
        ax.axvspan(seconds(start), seconds(end), color=SCHEDULED_COLOURS[work], alpha=0.25, lw=0,
                   label=None if work in labelled else work)  # fmt: skip
        labelled.add(work)
    if labelled:
        ax.legend(fontsize=7)


def scheduled_spans(step):
    """(work, start, end) on the clock of a step's validation and checkpoint: a step ends with its validation,
    its metrics lines (logging), then its checkpoint, and `clock` is its end."""
    checkpoint_s, logging_s = step.get("checkpoint", 0.0) / 1e3, step.get("logging", 0.0) / 1e3
    validated = step["clock"] - checkpoint_s - logging_s
    if step.get("validation"):
        yield "validation", validated - step["validation"] / 1e3, validated
    if step.get("checkpoint"):
        yield "checkpoint", step["clock"] - checkpoint_s, step["clock"]


FIGURES = {  # file -> (what draws it, figure size in inches)
    "losses.png": (draw_losses, (11, 7)),
    "phases.png": (draw_phases, (11, 5)),
    "utilisation.png": (draw_utilisation, (11, 4)),
}
