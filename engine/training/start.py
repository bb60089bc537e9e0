"""A training run's start-up: the device, the data, the weights to start from, the run folder and the records
written before the first step (the census of a step, the device's probe, the environment)."""

import time
from dataclasses import replace
from pathlib import Path

import torch

from engine.data import cache, crops, image_files
from engine.data.node_copy import load_once_per_node
from engine.errors import UserError
from engine.evaluation import metrics
from engine.model import execution, rescaler
from engine.training import checkpoints, config, distributed, run_folder
from engine.training.progress import images_cached
from engine.training.step_census import census, census_json
from profiling import records
from profiling.runtime.probe import probe
from profiling.stats import counted


def pick_device(cfg, ranks_here=1):
    """The training device; a valid --device or --precision that this machine cannot run is one line.
    `ranks_here`: the ranks torchrun started on this node."""
    want = cfg.device
    if ranks_here > 1 and ":" in want:
        raise UserError(
            f"--device {want} would put the {ranks_here} ranks of this node on one GPU; under torchrun each rank "
            "takes its own (LOCAL_RANK): use --device cuda (or auto)"
        )
    device = execution.device_for(want)
    if cfg.precision != "fp32" and device.type != "cuda":
        raise UserError(f"--precision {cfg.precision} needs a GPU; use --precision fp32 on the CPU")
    if cfg.precision == "bf16" and torch.cuda.get_device_capability(device) < (8, 0):
        name, (major, minor) = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
        raise UserError(
            f"--precision bf16 needs compute capability 8.0 or newer (A100, H100); this {name} is {major}.{minor}: "
            "use --precision fp16 or fp32"
        )
    return device


def training_data(cfg, ranks, log):
    """(train set with its LR references, validation set, where they are: the cache folder or "memory"):
    mapped from the data cache, or, with --data-cache off or a cache that cannot be written, decoded into
    memory once per node (engine/data/node_copy.py)."""
    if cfg.data_cache != "off":
        folder = Path(cfg.data_cache) if cfg.data_cache else cache.default_folder()
        reader = cache.Cache(folder, cfg.scale, log, images_cached if ranks.main else cache.nothing_shown)
        sets = distributed.first_on_each_node(lambda: cached_sets(cfg, reader, log), ranks)
        if sets:
            return *agreed(sets, ranks), str(folder)
    return *agreed(load_once_per_node(lambda: read_sets(cfg, crops.Decoded(cfg.scale)), ranks, log), ranks), "memory"


def agreed(sets, ranks):
    """The (train, validation) sets, once every rank is found to hold the same files in the same order."""
    names = [list(s.names) for s in sets]
    distributed.same_on_every_rank(names, ranks, "a different list of training or validation images")
    return sets


def cached_sets(cfg, reader, log):
    """The sets from the data cache, or None (said in one line) when it cannot take the entries it lacks."""
    try:
        return read_sets(cfg, reader)
    except cache.Unwritable as err:
        log(f"[yellow]{err}: the images are decoded into memory for this job")
        return None


def read_sets(cfg, reader):
    """(train set, validation set) from --data/--val, or the embedded photographs, read by `reader` (the
    data cache, or crops.Decoded)."""
    if cfg.data:
        train = image_files.read_folder(cfg.data, cfg.crop, reader.training)
    else:
        train = image_files.embedded("train", cfg.crop, reader.training)
    if cfg.val:
        val = image_files.read_folder(cfg.val, metrics.smallest_side(cfg.scale), reader.images)
    else:
        val = image_files.embedded("held_out", read=reader.images) if not cfg.data else image_files.ImageSet([], [], {})
    return train, val


def data_record(cfg, train, val, where):
    """What the run read, for env.jsonl: each set's folder, images, skips and conversions, and where the
    decoded images were (the cache folder, or memory)."""
    sets = {"train": (cfg.data, train), "val": (cfg.val, val)}
    return {
        "decoded_in": where,
        **{
            name: {"folder": folder or "embedded", "images": len(found.names), "skipped": found.skipped,
                   "converted": found.converted}
            for name, (folder, found) in sets.items()
        },
    }  # fmt: skip


def initialise_from(trainer, path, log):
    """Fine-tuning, or a CRM's frozen IRN: the IRN weights of a checkpoint, an official .pth or a run folder's
    newest checkpoint, with a fresh optimiser and schedule."""
    obj = rescaler.read_checkpoint(path) if Path(path).is_file() else checkpoints.load_newest(records.find(path), log)
    weights = rescaler.from_checkpoint(obj)
    if not isinstance(weights, rescaler.Rescaler):
        raise UserError(f"--init-from {path} holds a CRM, not an IRN; give the IRN's weights")
    if weights.arch != trainer.irn.arch:
        mismatch = ", ".join(
            f"{k} {weights.arch[k]} (not {v})" for k, v in trainer.irn.arch.items() if weights.arch[k] != v
        )
        raise UserError(f"--init-from {path} holds another network: {mismatch}; set those flags to match it")
    trainer.irn.load_state_dict(weights.state_dict())
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


def open_run(cfg, flags, ranks, log):
    """(folder, checkpoint state or None): rank 0 creates or finds the run folder, every rank learns it."""
    folder = None
    if ranks.main:
        root = flags.runs_dir
        folder = records.find(flags.resume, root) if flags.resume else run_folder.create(flags.name, root)
        records.write_json(folder / records.CONFIG, cfg.to_json())
    folder = Path(distributed.broadcast(str(folder) if folder else None, ranks))
    return folder, (checkpoints.load_newest(folder, log=log) if flags.resume else None)


def write_start_records(trainer, folder, state, data):
    """census.json (rank 0) and env.jsonl's line for this job: every rank's versions, device, seed, first
    step, probe (launch cost and matrix-product rate, for the report's floors), with fused dense blocks each
    dense-block shape's fused and cuDNN times and the choice, gathered on rank 0, and the `data` the job read
    (data_record)."""
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
            out.write({**envs[0], "world_size": ranks.world, "ranks": envs, "data": data})


def network_line(cfg, trainer):
    """What trains: IRN, or a CRM on a frozen IRN, and its trainable parameters."""
    trained = sum(p.numel() for p in trainer.trained_network().parameters() if p.requires_grad)
    irn = f"IRN x{cfg.scale}, {cfg.blocks_per_stage} blocks per stage, growth {cfg.growth}"
    if cfg.crm:
        crm = f"CRM of {cfg.crm_blocks} RRDBs, {cfg.crm_features} features, growth {cfg.crm_growth}"
        return f"{crm}: {trained:,} parameters, trained on a frozen {irn}"
    return f"{irn}: {trained:,} parameters"


def notes(found):
    """': 1 converted from L: gray.png; 1 skipped, corrupt or unreadable: cut.png' of a set, or ''."""
    groups = {f"converted from {mode}": names for mode, names in found.converted.items()}
    groups |= {f"skipped, {why}": names for why, names in found.skipped.items()}
    return f": {image_files.describe_skipped(groups)}" if groups else ""


def describe(cfg, flags, trainer, train_set, val_set, log):
    """The start-up summary, printed and kept in train.log: the config and where its values came from, the
    network, the data, the validation and the device."""
    own = [f"{config.flag(k)} {config.shown(getattr(cfg, k))} ({where})" for k, where in flags.sources.items()
           if where != f"{config.SCHEMA}.toml"]  # fmt: skip
    log(f"config {cfg.config}: {'; '.join(own) or 'as it is'}; every other key: configs/{config.SCHEMA}.toml")
    log(f"network: {network_line(cfg, trainer)}")
    log(
        f"data: {counted(len(train_set.names), 'image')} to train on ({cfg.data or 'the embedded photographs'})"
        f"{notes(train_set)}"
    )
    if val_set.names:
        used, when = min(len(val_set.names), cfg.val_max_images), "after the last step"
        if cfg.val_every:
            when = f"every {cfg.val_every} steps and {when}"
        found = counted(len(val_set.names), "image")
        log(f"validation: {f'{used} of {found}' if used < len(val_set.names) else found} {when}{notes(val_set)}")
    else:
        log("[yellow]no validation set: no scores, samples/ or best.pt; add --val DIR (held-out HR images) for them")
    device = trainer.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    log(f"device: {name}, {cfg.precision}" + (f", torch.compile {cfg.compile}" if cfg.compile != "off" else ""))
