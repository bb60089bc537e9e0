"""Train IRN: `python -m engine.train [--config irn_x4] [--data DIR] [--KEY VALUE ...] [--resume runs/run_N]`.

Every key of configs/*.toml is a flag. Each step is timed phase by phase (profiling/runtime/timer.py);
the run folder gets metrics.jsonl, phases.jsonl, gpu.jsonl, checkpoints/, samples/ and explosion records.
The run, start to end: engine/training/start.py, then engine/training/loop.py.
"""

import os
import sys

from engine.data.node_copy import load_once_per_node
from engine.errors import UserError, cli
from engine.training import checkpoints, config, distributed, start
from engine.training.loop import Loop
from engine.training.progress import console, summary
from engine.training.step import Trainer
from engine.training.stopping import TimeLimit
from profiling import records
from profiling.runtime import tensorboard


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's; the batch must split evenly across ranks
    cfg, flags = config.resolve(argv, resumed_config=lambda run: records.read_config(records.find(run)), world=world)
    if cfg.tensorboard and (why := tensorboard.missing()):
        raise UserError(why)
    time_limit = TimeLimit(config.parse_duration(cfg.time_limit))
    ranks = distributed.init()
    try:
        run(cfg, flags, ranks, time_limit)
    finally:
        distributed.shutdown(ranks)


def run(cfg, flags, ranks, time_limit):
    device = start.pick_device(cfg, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    log = console.print if ranks.main else start.print_nothing
    train_set, val_set = load_once_per_node(lambda: start.training_data(cfg), ranks, log)
    checkpoints.seed_all(cfg.seed + ranks.rank)  # DDP copies rank 0's initial weights to every rank
    trainer = Trainer(cfg, device, ranks)
    if cfg.fast_kernels:
        log(f"--fast-kernels: {trainer.kernel_note or trainer.dense_note or 'dense blocks, Haar and coupling fused'}")
    for choice in trainer.dense_choices:
        log(f"--dense-kernels {cfg.dense_kernels}: {choice}")
    if cfg.init_from and not flags.resume:  # before the run folder exists: a mismatch leaves none behind
        start.initialise_from(trainer, cfg.init_from, log)
    folder, state = start.open_run(cfg, flags, ranks)
    if state is not None:
        trainer.load_state(state)
    start.write_start_records(trainer, folder, state)
    log(f"run folder: [bold]{folder}[/]  (report: python -m profiling.report {folder})")
    first = state["step"] if state else 0
    step, stopped, seconds = Loop(trainer, folder, train_set, val_set, time_limit, log).run(state)
    if ranks.main:
        summary(console, folder, cfg, first, step, seconds, stopped)
        if stopped:
            console.print(
                f"stopped by {stopped} at step {step}; checkpoint saved. "
                f"Resume with: [bold]python -m engine.train --resume {folder}"
            )


if __name__ == "__main__":
    main()
