"""The training loop: data, step, log; validation and checkpoints on schedule; a stop on a signal, at the time
limit or after the last step, always with a checkpoint.

Steps are numbered from 1: step N is the N-th optimisation step, and every record (metrics, phases,
explosions), checkpoint (step_N.pt: the state after step N), sample grid and the console call it N. A
step's losses reach the host one step late (engine/training/step.py), so its metrics line is written in
the next iteration; before scheduled work the loop waits for them. Every rank runs the loop; rank 0 alone
writes metrics, samples and checkpoints, each rank its own phase timings and GPU samples.
"""

import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass

from engine.data import crops
from engine.evaluation.grids import save_rescale_grid
from engine.evaluation.scoring import VALIDATION, score_images, summarise
from engine.training import checkpoints, config, distributed
from engine.training.explosion_guard import ExplosionGuard
from engine.training.progress import TrainingProgress, console
from engine.training.stopping import StopRequest, ignore_stop_signals
from profiling import records
from profiling.runtime.captures import Captures, NsysCapture, PySpyCapture, TorchProfileCapture
from profiling.runtime.gpu_sampler import Sampler
from profiling.runtime.mirrors import MIRRORS
from profiling.runtime.timer import PhaseTimer, nvtx_ranges


def due(step, every):
    """Whether a task run every `every` steps (0: never) falls on `step`."""
    return every > 0 and step % every == 0


@dataclass
class Sinks:
    """Where the loop's records go, open for the loop's lifetime."""

    timer: PhaseTimer  # phases.jsonl of this rank
    metrics: object  # rank 0's metrics.jsonl (None on other ranks)
    mirrors: list  # the dashboards rank 0 copies the records to (--tensorboard, --wandb)
    bar: TrainingProgress
    captures: Captures
    stop: StopRequest


def open_sinks(stack, cfg, folder, device, ranks, first_step, log):
    """Every record file, the sampler, the signal handlers, the captures and the progress bar, closed by `stack`."""
    phases = stack.enter_context(records.JsonLines(records.rank_file(folder, records.PHASES_STEM, ranks.rank)))
    samples = stack.enter_context(records.JsonLines(records.rank_file(folder, records.SAMPLES_STEM, ranks.rank)))
    metrics = stack.enter_context(records.JsonLines(folder / records.METRICS)) if ranks.main else None
    mirrors = [mirror(folder) for flag, mirror in MIRRORS.items() if getattr(cfg, flag)] if ranks.main else []
    for mirror in mirrors:
        stack.callback(mirror.close)
    if mirrors:
        phases = records.Tee(phases.write, *(m.phases for m in mirrors))
        metrics = records.Tee(metrics.write, *(m.metrics for m in mirrors))
    timer = PhaseTimer(device, sink=phases, ranges=nvtx_ranges(device, cfg.nvtx))
    stack.callback(timer.flush)
    stack.enter_context(Sampler(samples, cfg.gpu_sample_ms, log=log, devices=device))
    stop = stack.enter_context(StopRequest())
    captures = Captures(capture_windows(cfg, folder, device, ranks.rank, log), console.print)
    stack.callback(captures.close)
    bar = stack.enter_context(TrainingProgress(cfg.steps, first_step, enabled=ranks.main))
    return Sinks(timer, metrics, mirrors, bar, captures, stop)


def capture_windows(cfg, folder, device, rank, log):
    """py-spy on rank 0; torch.profiler on every rank, each writing its own trace; on CUDA, every rank's
    Nsight Systems capture range (a CPU run says in one line that it has none)."""
    windows = []
    if rank == 0 and (window := config.parse_window(cfg.py_spy, "py-spy")):
        windows.append((PySpyCapture(folder, console.print, cfg.py_spy_native), window))
    if window := config.parse_window(cfg.torch_profile, "torch-profile"):
        windows.append((TorchProfileCapture(folder, device, console.print, rank=rank), window))
    if (window := config.parse_window(cfg.nsys, "nsys")) and (capture := nsys_capture(device, log)):
        windows.append((capture, window))
    return windows


def nsys_capture(device, log):
    """Nsight Systems' capture range on CUDA; on a CPU, None and one line saying so."""
    if device.type == "cuda":
        return NsysCapture(device)
    log("--nsys: Nsight Systems' capture range is CUDA's; this CPU run brackets no steps")
    return None


def metrics_record(result, step_s, batch_size):
    """The metrics line of a step: its losses and grad norm, and its event unless it was an ordinary one."""
    record = {"step": result.step, "lr": result.lr, "step_s": round(step_s, 5)}
    if result.event != "skipped":  # a non-finite step logs only its event; explosions.jsonl holds its values
        record.update(result.losses, loss=sum(result.losses.values()), grad_norm=result.grad_norm)
        record["images_per_s"] = round(batch_size / max(step_s, 1e-9), 3)
    if result.event != "ok":
        record["event"] = result.event
    return record


def sample_grid(folder, step):
    return folder / "samples" / f"step_{step:08d}.png"


def validate(trainer, val, step, folder, cfg):
    """Full-image PSNR/SSIM on Y (border = scale), every rank scoring its share of the images (so no
    rank waits in a collective while one validates), and rank 0's grid of the first image."""
    ranks = trainer.ranks
    indices = list(range(min(len(val.images), cfg.val_max_images)))[ranks.rank :: ranks.world]

    def grid_of_first(i, hr, lr, upscales):
        if i == 0:
            save_rescale_grid(hr, lr, upscales, cfg.scale, sample_grid(folder, step))

    mine = score_images(
        trainer.model, [val.images[i] for i in indices], VALIDATION, trainer.device, grid_of_first, indices
    )
    rows = [row for part in distributed.gather(mine, ranks) for row in part]
    if not rows:
        return {}
    result = summarise(rows, VALIDATION)
    scores = {k: result["settings"]["T=1"][k] for k in ("psnr_y", "ssim_y", "psnr_rgb")}
    return {f"val_{k}": round(v, 4) for k, v in (scores | {"lr_psnr_y": result["lr_psnr_y"]}).items()}


def save_checkpoint(trainer, folder, step, counters, best=False):
    """Every rank checks that the weights agree (a collective); rank 0 alone writes."""
    agree = distributed.weights_agree(trainer.model, trainer.ranks)
    if not agree:
        console.print(f"[red]warning: the ranks' weights differ at step {step}; the checkpoint holds rank 0's")
    if trainer.ranks.main:
        state = {**trainer.state(step), **counters, "world_size": trainer.ranks.world, "ranks_agree": agree}
        checkpoints.save(folder, step, state, kept=trainer.cfg.checkpoints_kept, best=best)


def resume_point(state, guard, cfg):
    """(first step, counters) of a run: where its checkpoint left off, or the start. The counters (samples seen,
    best validation PSNR-Y, the guard's statistics) go into every checkpoint."""
    if state is None:
        return 0, {"samples_seen": 0, "best_psnr_y": float("-inf")}
    if "guard" in state:
        guard.load_state_dict(state["guard"])
    counters = {
        "samples_seen": state.get("samples_seen", state["step"] * cfg.batch_size),
        "best_psnr_y": state.get("best_psnr_y", float("-inf")),
    }
    return state["step"], counters


class Loop:
    """One run's loop over its steps; `run(state)` trains from the checkpoint `state` (None: the start)."""

    def __init__(self, trainer, folder, train_set, val_set, time_limit, log):
        self.trainer, self.cfg, self.folder = trainer, trainer.cfg, folder
        self.train_set, self.val_set, self.time_limit, self.log = train_set, val_set, time_limit, log
        cfg = self.cfg
        self.guard = ExplosionGuard(
            folder, cfg.explosion_factor, cfg.explosion_window, cfg.max_bad_steps, train_set.names, cfg.grad_clip,
            ranks=trainer.ranks, keep_batches=cfg.explosion_batches_kept,
        )  # fmt: skip
        self.step_seconds = {}  # loop seconds of the steps whose metrics line is still to be written

    def run(self, state):
        """Returns (the steps done, why it stopped early or None, seconds)."""
        trainer, cfg, ranks, t0 = self.trainer, self.cfg, self.trainer.ranks, time.monotonic()
        step, self.counters = resume_point(state, self.guard, cfg)
        self.first_step = step
        pin = trainer.device.type == "cuda"
        batches = iter(
            crops.loader(
                self.train_set, cfg, self.counters["samples_seen"], ranks.rank, ranks.world, pin,
                worker_init_fn=ignore_stop_signals,
            )
        )  # fmt: skip
        stopped, saved_at = None, None
        with ExitStack() as stack:
            self.sinks = open_sinks(stack, cfg, self.folder, trainer.device, ranks, step, self.log)
            while step < cfg.steps and not stopped:
                step, stopped, saved = self.iteration(step, batches)
                saved_at = step if saved else saved_at
        if saved_at != step:  # a loop that never ran (the run was already complete)
            save_checkpoint(trainer, self.folder, step, self.counters | {"guard": self.guard.state_dict()})
        return step, stopped, time.monotonic() - t0

    def iteration(self, done, batches):
        """The step after the `done` ones, then the work scheduled after it: returns (its number, why the run
        stops or None, whether a checkpoint was written)."""
        cfg, timer, began, step = self.cfg, self.sinks.timer, time.perf_counter(), done + 1
        with timer.phase("capture") if self.sinks.captures.busy(step) else nullcontext():
            captured = self.sinks.captures.at_step(step)
        timer.begin_step(step)  # after the captures start, so that a capture holds whole steps
        with timer.phase("data"):
            batch = next(batches)
        compiling = cfg.compile != "off" and step == self.first_step + 1
        if compiling:
            self.log(f"compiling (torch.compile {cfg.compile}): the job's first step traces and compiles the model")
        results = [self.trainer.step(batch, timer, self.guard, step)]
        if compiling:  # the compiled forward and backward have run once: what compiling cost, kept in phases.jsonl
            compiled_s = time.perf_counter() - began
            timer.note("compile", compiled_s * 1e3)
            self.log(f"compiled in {compiled_s:.1f} s")
        self.counters["samples_seen"] += cfg.batch_size
        self.time_limit.timed(step_s=time.perf_counter() - began)
        stopped = self.stop_reason(step)
        last = step == cfg.steps
        validating = (due(step, cfg.val_every) or last) and not stopped  # a stop leaves time for the checkpoint only
        checkpointing = due(step, cfg.checkpoint_every) or stopped or last
        if validating or checkpointing:
            results.append(self.trainer.drain(self.guard))  # this step's own values, before its scheduled work
        self.step_seconds[step] = time.perf_counter() - began
        lines = [metrics_record(r, self.step_seconds.pop(r.step), cfg.batch_size) for r in results if r]
        best = self.validate_after(step, lines[-1]) if validating else False
        self.write_lines(lines)
        if checkpointing or best:
            self.save(step, best)
        timer.end_step(step, captured=captured)
        return step, stopped, checkpointing or best

    def stop_reason(self, step):
        """Why every rank stops after `step` (a signal, the time limit, another rank's reason), or None."""
        cfg, stop = self.cfg, self.sinks.stop
        out_of_time = self.time_limit.reached(validation_next=due(step + 1, cfg.val_every) or step + 1 == cfg.steps)
        if distributed.any_rank(stop.reason or out_of_time, self.trainer.ranks):  # every rank stops at the same step
            return stop.reason or ("time limit" if out_of_time else "another rank")
        return None

    def validate_after(self, step, line):
        """Validate after `step` into its metrics `line`; whether it is the best so far (kept as best.pt)."""
        with self.sinks.timer.phase("validation"):
            began = time.perf_counter()
            line.update(validate(self.trainer, self.val_set, step, self.folder, self.cfg))
            self.time_limit.timed(validation_s=time.perf_counter() - began)
            grid = sample_grid(self.folder, step)
            for mirror in self.sinks.mirrors if grid.is_file() else ():
                mirror.image("samples", grid, step)
        improved = line.get("val_psnr_y", float("-inf")) > self.counters["best_psnr_y"]
        if improved:
            self.counters["best_psnr_y"] = line["val_psnr_y"]
        return improved

    def write_lines(self, lines):
        with self.sinks.timer.phase("logging"):
            for line in lines if self.trainer.ranks.main else ():
                self.sinks.metrics.write(line)
                self.sinks.bar.update(line["step"], line)

    def save(self, step, best=False):
        with self.sinks.timer.phase("checkpoint"):
            began = time.perf_counter()
            self.counters["guard"] = self.guard.state_dict()
            save_checkpoint(self.trainer, self.folder, step, self.counters, best=best)
            self.time_limit.timed(checkpoint_s=time.perf_counter() - began)
