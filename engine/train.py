"""Train IRN: `python -m engine.train [--config irn_x4] [--data DIR] [--KEY VALUE ...] [--resume runs/run_N]`.

Every key of configs/*.toml is a flag. Each step is timed phase by phase (profiling/runtime/timer.py);
the run folder gets metrics.jsonl, phases.jsonl, gpu.jsonl, checkpoints/, samples/ and explosion records.
One job of the run, start to end: engine/training/job.py.
"""

import sys

from engine.errors import cli


@cli(resumable=True)
def main(argv=None):
    from engine.training.job import train  # torch and the model load here, where Ctrl-C is one line

    train(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
