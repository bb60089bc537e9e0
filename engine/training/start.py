"""A training run's start-up: the device, the data, the weights to start from, the run folder and the records
written before the first step (the census of a step, the device's probe, the environment)."""

import time
from dataclasses import replace
from pathlib import Path

import torch

import engine
from engine.data import crops, image_files
from engine.errors import UserError
from engine.evaluation import metrics
from engine.training import checkpoints, distributed, run_folder
from engine.training.progress import console
from engine.training.step_census import census, census_json
from profiling import records
from profiling.runtime.probe import probe


def pick_device(cfg, ranks_here=1):
    """The training device; a valid --device or --precision that this machine cannot run is one line.
    `ranks_here`: the ranks torchrun started on this node."""
    want = cfg.device
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
    if cfg.precision != "fp32" and device.type != "cuda":
        raise UserError(f"--precision {cfg.precision} needs a GPU; use --precision fp32 on the CPU")
    if cfg.precision == "bf16" and torch.cuda.get_device_capability(device) < (8, 0):
        name, (major, minor) = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
        raise UserError(
            f"--precision bf16 needs compute capability 8.0 or newer (A100, H100); this {name} is {major}.{minor}: "
            "use --precision fp16 or fp32"
        )
    return device


def training_data(cfg):
    """(train set with its LR references, validation set) from --data/--val, or the embedded photographs."""
    train = image_files.read_folder(cfg.data, min_size=cfg.crop) if cfg.data else image_files.embedded("train")
    if cfg.val:
        val = image_files.read_folder(cfg.val, min_size=metrics.smallest_side(cfg.scale))
    else:
        val = image_files.embedded("held_out") if not cfg.data else image_files.ImageSet([], [], {})
    for name, found in (("training", train), ("validation", val)):
        if found.skipped:
            console.print(f"[yellow]{name} images skipped: {image_files.describe_skipped(found.skipped)}")
    return crops.training_set(train, cfg.scale), val


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
    per_rank = replace(cfg, batch_size=cfg.batch_size // ranks.world)
    fused = cfg.fast_kernels and trainer.kernel_note is None
    counted = census_json(per_rank, fast_kernels=fused, fused_dense=trainer.dense_note is None)
    model = census(replace(per_rank, invertible_backprop=False)) if cfg.invertible_backprop else None
    counted["model_flops_per_step"] = model.flops_per_step if model else counted["flops_per_step"]
    counted["compile"] = cfg.compile
    records.write_json(folder / records.CENSUS, counted)


def open_run(cfg, flags, ranks):
    """(folder, checkpoint state or None): rank 0 creates or finds the run folder, every rank learns it."""
    folder = None
    if ranks.main:
        folder = records.find(flags.resume) if flags.resume else run_folder.create(flags.name)
        records.write_json(folder / records.CONFIG, cfg.to_json())
    folder = Path(distributed.broadcast(str(folder) if folder else None, ranks))
    log = console.print if ranks.main else print_nothing
    return folder, (checkpoints.load_newest(folder, log=log) if flags.resume else None)


def write_start_records(trainer, folder, state):
    """census.json (rank 0) and env.jsonl's line for this job: every rank's versions, device, seed, first
    step, probe (launch cost and matrix-product rate, for the report's floors) and, with fused dense
    blocks, each dense-block shape's fused and cuDNN times and the choice, gathered on rank 0."""
    cfg, ranks, device = trainer.cfg, trainer.ranks, trainer.device
    job = {"rank": ranks.rank, "seed": cfg.seed + ranks.rank, "start_step": state["step"] if state else 0}
    job["time"] = time.time()
    if trainer.dense_choices:
        job["dense_kernels"] = {"mode": cfg.dense_kernels, "choices": [c.to_json() for c in trainer.dense_choices]}
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # measuring must not move the run's random streams
        job["probe"] = probe(device, cfg.precision, cfg.tf32)  # TF32 as the Trainer set the convolutions
        if ranks.main:
            write_census(cfg, folder, ranks, trainer)
    envs = distributed.gather(run_folder.environment(device, job), ranks)
    if ranks.main:
        with records.JsonLines(folder / records.ENV) as out:
            out.write({**envs[0], "world_size": ranks.world, "ranks": envs})


def print_nothing(*args):
    pass
