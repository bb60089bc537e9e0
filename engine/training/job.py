"""One job of a training run (a run may take several, each resuming the last): its config from the command line,
then start-up (engine/training/start.py), the loop (engine/training/loop.py) and the summary."""

import os

from engine.errors import UserError
from engine.training import checkpoints, config, distributed, start
from engine.training.loop import Loop
from engine.training.progress import console, rank_log, summary, transcript
from engine.training.restoration import trainer_for
from engine.training.stopping import TimeLimit
from profiling import records
from profiling.runtime.mirrors import MIRRORS, missing


def train(argv):
    """One job of a training run, from its command line to its summary."""
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's; the batch must split evenly across ranks
    cfg, flags = config.resolve(argv, resumed_config=resumed_config, world=world)
    for flag in MIRRORS:
        if getattr(cfg, flag) and (why := missing(flag)):
            raise UserError(why)
    time_limit = TimeLimit(config.parse_duration(cfg.time_limit))
    ranks = distributed.init()
    if ranks.main:  # the run's train.log is rank 0's
        transcript.begin()
    try:
        run(cfg, flags, ranks, time_limit)
    except BaseException as err:  # the command prints its one line; the run's log says it too
        transcript.log_only(f"stopped: {err or type(err).__name__}")
        raise
    finally:
        transcript.end()
        distributed.shutdown(ranks)


def resumed_config(run, runs_dir=None):
    return records.read_config(records.find(run, runs_dir))


def run(cfg, flags, ranks, time_limit):
    log = rank_log(ranks)
    if ranks.main and flags.resume:  # the run's log exists: a job that fails before its folder opens says so there
        transcript.keep_in(records.find(flags.resume, flags.runs_dir) / records.LOG)
    trainer, train_set, val_set, decoded_in = build(cfg, flags, ranks, log)
    folder, state = start.open_run(cfg, flags, ranks, log)
    if ranks.main and not flags.resume:
        transcript.keep_in(folder / records.LOG)
    if state is not None:
        trainer.load_state(state)
    start.write_start_records(trainer, folder, state, start.data_record(cfg, train_set, val_set, decoded_in))
    start.describe(cfg, flags, trainer, train_set, val_set, log)
    log(f"run folder: [bold]{folder}[/]  (report: python -m profiling.report {folder})")
    step, stopped, seconds = Loop(trainer, folder, train_set, val_set, time_limit, log).run(state)
    if ranks.main:
        finish(folder, cfg, state["step"] if state else 0, step, seconds, stopped)


def build(cfg, flags, ranks, log):
    """(trainer, train set, validation set, where the data was decoded), before the run folder exists: a
    mistake found here leaves none behind."""
    if cfg.crm and not (cfg.init_from or flags.resume):
        raise UserError("--crm trains on a frozen IRN: give its weights with --init-from (a checkpoint, .pth or run)")
    device = start.pick_device(cfg, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    train_set, val_set, decoded_in = start.training_data(cfg, ranks, log)
    checkpoints.seed_all(cfg.seed + ranks.rank)  # DDP copies rank 0's initial weights to every rank
    trainer = trainer_for(cfg, device, ranks)
    say_kernels(cfg, trainer, log)
    if cfg.init_from and not flags.resume:
        start.initialise_from(trainer, cfg.init_from, log)
    return trainer, train_set, val_set, decoded_in


def say_kernels(cfg, trainer, log):
    """What --fast-kernels runs fused, and each dense-block shape's choice of kernels."""
    if cfg.fast_kernels:
        fused = trainer.kernel_note or trainer.dense_note or "dense blocks, Haar and coupling run fused"
        log(f"--fast-kernels: {fused}")
    for choice in trainer.dense_choices:
        log(f"--dense-kernels {cfg.dense_kernels}: {choice}")


def finish(folder, cfg, first, step, seconds, stopped):
    """The run's summary, and how to resume a run that a signal or the time limit stopped."""
    summary(console, folder, cfg, first, step, seconds, stopped)
    if stopped:
        console.print(
            f"stopped by {stopped} at step {step}; checkpoint saved. "
            f"Resume with: [bold]python -m engine.train --resume {folder}"
        )
