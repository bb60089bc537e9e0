"""Train IRN: `python -m engine.train [--config irn_x4] [--data DIR] [--KEY VALUE ...] [--resume runs/run_N]`.

Every key of configs/*.toml is a flag. Each step is timed phase by phase (profiling/timer.py); the run
folder gets metrics.jsonl, phases.jsonl, gpu.jsonl, checkpoints/, samples/ and explosion records.
"""

import os
import sys
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path

import torch
from rich.console import Console

import engine
from engine.data import crops, image_files
from engine.data.node_copy import load_once_per_node
from engine.errors import UserError, cli
from engine.evaluation import metrics
from engine.evaluation.grids import save_rescale_grid
from engine.evaluation.scoring import VALIDATION, score_images, summarise
from engine.training import checkpoints, config, distributed, run_folder
from engine.training.explosion_guard import ExplosionGuard, TooManyBadSteps
from engine.training.progress import TrainingProgress, summary
from engine.training.step import Trainer
from engine.training.step_census import census, census_json
from engine.training.stopping import StopRequest, TimeLimit, ignore_stop_signals
from profiling import records
from profiling.runtime import tensorboard
from profiling.runtime.captures import Captures, PySpyCapture, TorchProfileCapture
from profiling.runtime.gpu_sampler import Sampler
from profiling.runtime.probe import probe
from profiling.runtime.timer import PhaseTimer

console = Console(stderr=True, soft_wrap=True)  # a message is one line, however long


def pick_device(cfg, ranks_here=1):
    """The training device; a valid --device or --precision that this machine cannot run is one line.
    `ranks_here`: the ranks torchrun started on this node."""
    want = cfg["device"]
    if ranks_here > 1 and ":" in want:
        raise UserError(
            f"--device {want} would put the {ranks_here} ranks of this node on one GPU; under torchrun each rank "
            "takes its own (LOCAL_RANK): use --device cuda (or auto)"
        )
    if want == "auto":
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    elif want.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {want} needs a CUDA GPU, and none is visible; use --device cpu")
    else:
        device = torch.device(want)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {want}: only {torch.cuda.device_count()} GPUs are visible (cuda:0 to cuda:N-1)")
    if cfg["precision"] != "fp32" and device.type != "cuda":
        raise UserError(f"--precision {cfg['precision']} needs a GPU; use --precision fp32 on the CPU")
    if cfg["precision"] == "bf16" and torch.cuda.get_device_capability(device) < (8, 0):
        name, (major, minor) = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
        raise UserError(
            f"--precision bf16 needs compute capability 8.0 or newer (A100, H100); this {name} is {major}.{minor}: "
            "use --precision fp16 or fp32"
        )
    return device


def training_data(cfg):
    """(train set with its LR references, validation set) from --data/--val, or the embedded photographs."""
    train = image_files.read_folder(cfg["data"], min_size=cfg["crop"]) if cfg["data"] else image_files.embedded("train")
    if cfg["val"]:
        val = image_files.read_folder(cfg["val"], min_size=metrics.smallest_side(cfg["scale"]))
    else:
        val = image_files.embedded("held_out") if not cfg["data"] else image_files.ImageSet([], [], {})
    for name, found in (("training", train), ("validation", val)):
        if found.skipped:
            console.print(f"[yellow]{name} images skipped: {image_files.describe_skipped(found.skipped)}")
    return crops.training_set(train, cfg["scale"]), val


def validate(trainer, val, step, folder, cfg):
    """Full-image PSNR/SSIM on Y (border = scale), every rank scoring its share of the images (so no
    rank waits in a collective while one validates), and rank 0's grid of the first image."""
    ranks = trainer.ranks
    indices = list(range(min(len(val.images), cfg["val_max_images"])))[ranks.rank :: ranks.world]

    def grid_of_first(i, hr, lr, upscales):
        if i == 0:
            save_rescale_grid(hr, lr, upscales, cfg["scale"], sample_grid(folder, step))

    mine = score_images(
        trainer.model, [val.images[i] for i in indices], VALIDATION, trainer.device, grid_of_first, indices
    )
    rows = [row for part in distributed.gather(mine, ranks) for row in part]
    if not rows:
        return {}
    result = summarise(rows, VALIDATION)
    scores = {k: result["settings"]["T=1"][k] for k in ("psnr_y", "ssim_y", "psnr_rgb")}
    return {f"val_{k}": round(v, 4) for k, v in (scores | {"lr_psnr_y": result["lr_psnr_y"]}).items()}


def sample_grid(folder, step):
    return folder / "samples" / f"step_{step:08d}.png"


def save_checkpoint(trainer, folder, step, progress, best=False):
    """Every rank checks that the weights agree (a collective); rank 0 alone writes."""
    agree = distributed.weights_agree(trainer.model, trainer.ranks)
    if not agree:
        console.print(f"[red]warning: the ranks' weights differ at step {step}; the checkpoint holds rank 0's")
    if trainer.ranks.main:
        state = {**trainer.state(step), **progress, "world_size": trainer.ranks.world, "ranks_agree": agree}
        checkpoints.save(folder, step, state, kept=trainer.cfg["checkpoints_kept"], best=best)


def initialise_from(trainer, path, log):
    """Fine-tuning: the weights of a checkpoint or an official .pth, with a fresh optimiser and schedule."""
    weights = engine.load(path)
    if weights.arch != trainer.model.arch:
        mismatch = ", ".join(
            f"{k} {weights.arch[k]} (not {v})" for k, v in trainer.model.arch.items() if weights.arch[k] != v
        )
        raise UserError(f"--init-from {path} holds another network: {mismatch}; set those flags to match it")
    trainer.model.load_state_dict(weights.state_dict())
    log(f"--init-from: weights of {path}; the optimiser and the learning-rate schedule start afresh")


def write_census(cfg, folder, ranks, trainer):
    """census.json: one rank's training step counted on fake tensors (the ops this run runs), and the
    model FLOPs of the step (as standard backprop makes them: MFU counts no recomputation)."""
    per_rank = {**cfg, "batch_size": cfg["batch_size"] // ranks.world}
    fused = cfg["fast_kernels"] and trainer.kernel_note is None
    counted = census_json(per_rank, fast_kernels=fused, fused_dense=trainer.dense_note is None)
    model = census({**per_rank, "invertible_backprop": False}) if cfg["invertible_backprop"] else None
    counted["model_flops_per_step"] = model.flops_per_step if model else counted["flops_per_step"]
    counted["compile"] = cfg["compile"]
    records.write_json(folder / records.CENSUS, counted)


def resume_command(folder):
    return f"python -m engine.train --resume {folder}"


def capture_windows(cfg, folder, device, rank):
    """py-spy on rank 0; torch.profiler on every rank, each writing its own trace."""
    windows = []
    if rank == 0 and (window := config.parse_window(cfg["py_spy"], "py-spy")):
        windows.append((PySpyCapture(folder, console.print, cfg["py_spy_native"]), window))
    if window := config.parse_window(cfg["torch_profile"], "torch-profile"):
        windows.append((TorchProfileCapture(folder, device, console.print, rank=rank), window))
    return windows


def metrics_record(result, step_s, batch_size):
    """The metrics line of a step: its losses and grad norm, and its event unless it was an ordinary one."""
    record = {"step": result.step, "lr": result.lr, "step_s": round(step_s, 5)}
    if result.event != "skipped":  # a non-finite step logs only its event; explosions.jsonl holds its values
        record.update(result.losses, loss=sum(result.losses.values()), grad_norm=result.grad_norm)
        record["images_per_s"] = round(batch_size / max(step_s, 1e-9), 3)
    if result.event != "ok":
        record["event"] = result.event
    return record


def train(trainer, cfg, folder, state, train_set, val_set, time_limit, log):
    """The loop: data, step, log; validate and checkpoint on schedule, stop on signals, the time limit
    or the last step, always with a checkpoints.

    A step's losses reach the host one step late (engine/trainer.py), so its metrics line is written
    in the next iteration; before scheduled work the loop waits for them. Every rank runs the loop;
    rank 0 alone writes metrics, samples and checkpoints, each rank its own phase timings and GPU
    samples. Returns (next step, why it stopped early or None, seconds).
    """
    device, ranks, t0 = trainer.device, trainer.ranks, time.monotonic()
    guard = ExplosionGuard(
        folder,
        cfg["explosion_factor"],
        cfg["explosion_window"],
        cfg["max_bad_steps"],
        train_set.names,
        write=ranks.main,
        keep_batches=cfg["explosion_batches_kept"],
    )
    step, progress = resume_point(state, guard, cfg)
    pin = device.type == "cuda"
    start = progress["samples_seen"]
    loader = crops.loader(train_set, cfg, start, ranks.rank, ranks.world, pin, worker_init_fn=ignore_stop_signals)
    batches = iter(loader)
    stopped, step_seconds, saved_at = None, {}, None
    with ExitStack() as stack:
        phases = stack.enter_context(records.JsonLines(records.rank_file(folder, records.PHASES_STEM, ranks.rank)))
        samples = stack.enter_context(records.JsonLines(records.rank_file(folder, records.SAMPLES_STEM, ranks.rank)))
        metrics = stack.enter_context(records.JsonLines(folder / records.METRICS)) if ranks.main else None
        board = tensorboard.TensorBoard(folder) if cfg["tensorboard"] and ranks.main else None
        if board:
            stack.callback(board.close)
            phases, metrics = records.Tee(phases.write, board.phases), records.Tee(metrics.write, board.metrics)
        timer = PhaseTimer(device, sink=phases)
        stack.callback(timer.flush)
        stack.enter_context(Sampler(samples, cfg["gpu_sample_ms"], log=log, devices=device))
        stop = stack.enter_context(StopRequest())
        captures = Captures(capture_windows(cfg, folder, device, ranks.rank), console.print)
        stack.callback(captures.close)
        bar = stack.enter_context(TrainingProgress(cfg["steps"], step, enabled=ranks.main))
        while step < cfg["steps"] and not stopped:
            began = time.perf_counter()
            with timer.phase("capture") if captures.busy(step) else nullcontext():
                captured = captures.at_step(step)
            with timer.phase("data"):
                batch = next(batches)
            done = [trainer.step(batch, timer, guard, step)]
            step += 1
            progress["samples_seen"] += cfg["batch_size"]
            checkpointing = due(step, cfg["checkpoint_every"])
            time_limit.timed(step_s=time.perf_counter() - began)
            out_of_time = time_limit.reached(
                validation_next=due(step + 1, cfg["val_every"]) or step + 1 == cfg["steps"]
            )
            if distributed.any_rank(stop.reason or out_of_time, ranks):  # every rank stops at the same step
                stopped = stop.reason or ("time limit" if out_of_time else "another rank")
            # a stop request leaves time for the checkpoint only (a cluster kills a job soon after its signal)
            validating = (due(step, cfg["val_every"]) or step == cfg["steps"]) and not stopped
            if validating or checkpointing or stopped or step == cfg["steps"]:
                done.append(trainer.drain(guard))  # this step's own values, before its scheduled work
            step_seconds[step - 1] = time.perf_counter() - began
            lines = [metrics_record(r, step_seconds.pop(r.step), cfg["batch_size"]) for r in done if r]
            if validating:
                with timer.phase("validation"):
                    began_validation = time.perf_counter()
                    lines[-1].update(validate(trainer, val_set, step, folder, cfg))
                    time_limit.timed(validation_s=time.perf_counter() - began_validation)
                    grid = sample_grid(folder, step)
                    if board and grid.is_file():
                        board.image("samples", grid, step)
                improved = lines[-1].get("val_psnr_y", float("-inf")) > progress["best_psnr_y"]
                if improved:
                    progress["best_psnr_y"] = lines[-1]["val_psnr_y"]
                checkpointing = checkpointing or improved  # the best checkpoint is kept apart
            with timer.phase("logging"):
                for line in lines if ranks.main else ():
                    metrics.write(line)
                    bar.update(line["step"] + 1, line)
            if checkpointing or stopped or step == cfg["steps"]:
                with timer.phase("checkpoint"):
                    began_save = time.perf_counter()
                    progress["guard"] = guard.state_dict()
                    save_checkpoint(trainer, folder, step, progress, best=validating and improved)
                    time_limit.timed(checkpoint_s=time.perf_counter() - began_save)
                saved_at = step
            timer.end_step(step - 1, captured=captured)
    if saved_at != step:  # a loop that never ran (the run was already complete)
        save_checkpoint(trainer, folder, step, progress | {"guard": guard.state_dict()})
    return step, stopped, time.monotonic() - t0


def resume_point(state, guard, cfg):
    """(first step, progress) of a run: where its checkpoint left off, or the start."""
    if state is None:
        return 0, {"samples_seen": 0, "best_psnr_y": float("-inf")}
    if "guard" in state:
        guard.load_state_dict(state["guard"])
    progress = {
        "samples_seen": state.get("samples_seen", state["step"] * cfg["batch_size"]),
        "best_psnr_y": state.get("best_psnr_y", float("-inf")),
    }
    return state["step"], progress


def due(step, every):
    """Whether a task run every `every` steps (0: never) falls on `step`."""
    return every > 0 and step % every == 0


def print_nothing(*args):
    pass


def open_run(cfg, flags, ranks):
    """(folder, checkpoint state or None): rank 0 creates or finds the run folder, every rank learns it."""
    folder = None
    if ranks.main:
        folder = records.find(flags.resume) if flags.resume else run_folder.create(flags.name)
        records.write_json(folder / records.CONFIG, cfg)
    folder = Path(distributed.broadcast(str(folder) if folder else None, ranks))
    log = console.print if ranks.main else print_nothing
    return folder, (checkpoints.load_newest(folder, log=log) if flags.resume else None)


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's; the batch must split evenly across ranks
    cfg, flags = config.resolve(argv, resumed_config=lambda run: records.read_config(records.find(run)), world=world)
    if cfg["tensorboard"] and (why := tensorboard.missing()):
        raise UserError(why)
    time_limit = TimeLimit(config.parse_duration(cfg["time_limit"]))
    ranks = distributed.init()
    try:
        run(cfg, flags, ranks, time_limit)
    finally:
        distributed.shutdown(ranks)


def run(cfg, flags, ranks, time_limit):
    device = pick_device(cfg, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    log = console.print if ranks.main else print_nothing
    train_set, val_set = load_once_per_node(lambda: training_data(cfg), ranks, log)
    checkpoints.seed_all(cfg["seed"] + ranks.rank)  # DDP copies rank 0's initial weights to every rank
    trainer = Trainer(cfg, device, ranks)
    if cfg["fast_kernels"]:
        fused = trainer.kernel_note or trainer.dense_note or "dense blocks, Haar and coupling run fused"
        log(f"--fast-kernels: {fused}")
    if cfg["init_from"] and not flags.resume:  # before the run folder exists: a mismatch leaves none behind
        initialise_from(trainer, cfg["init_from"], log)
    folder, state = open_run(cfg, flags, ranks)
    if state is not None:
        trainer.load_state(state)
    start = state["step"] if state else 0
    job = {"rank": ranks.rank, "seed": cfg["seed"] + ranks.rank, "start_step": start, "time": time.time()}
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # measuring must not move the run's random streams
        # launch cost and matmul rate, for the report's floors (TF32 as the Trainer set the convolutions)
        job["probe"] = probe(device, cfg["precision"], cfg["tf32"])
        if ranks.main:
            write_census(cfg, folder, ranks, trainer)
    envs = distributed.gather(run_folder.environment(device, job), ranks)
    if ranks.main:
        with records.JsonLines(folder / records.ENV) as out:
            out.write({**envs[0], "world_size": ranks.world, "ranks": envs})
        console.print(f"run folder: [bold]{folder}[/]  (report: python -m profiling.report {folder})")
    try:
        step, stopped, seconds = train(trainer, cfg, folder, state, train_set, val_set, time_limit, log)
    except TooManyBadSteps as err:
        raise UserError(str(err)) from None
    if ranks.main:
        summary(console, folder, cfg, start, step, seconds, stopped)
        if stopped:
            console.print(
                f"stopped by {stopped} at step {step}; checkpoint saved. Resume with: [bold]{resume_command(folder)}"
            )


if __name__ == "__main__":
    main()
