"""`python -m profiling.census --config irn_x4 | --resume RUN [--KEY VALUE ...] [--fast-kernels] [--json]`

One training step counted on fake tensors (no GPU, no compute): FLOPs, GPU kernel launches and bytes
moved per op category and in all, then the floors of that step on P100, V100, A100 and H100
(profiling/report/roofline.py). Every config key is a flag, as for engine.train; --resume counts a run's
config. The counts are of the eager ops; torch.compile fuses some of them.
"""

import json
import sys
from dataclasses import replace

from rich.table import Table

from engine import terminal
from engine.errors import UserError, cli
from engine.training import config
from engine.training.step_census import census_json
from profiling import records
from profiling.report import roofline
from profiling.report.render import forecast_table


def census_table(counted, title):
    table = Table(title=title)
    for col in ("category", "GFLOP", "GB moved", "kernels", "aten ops", "FLOP/byte"):
        table.add_column(col, justify="left" if col == "category" else "right")
    rows = [
        *counted["categories"].items(),
        ("[bold]step", {k: counted[f"{k}_per_step"] for k in ("flops", "bytes", "kernels", "ops")}),
    ]
    for name, c in rows:
        intensity = c["flops"] / c["bytes"] if c["bytes"] else 0.0
        table.add_row(
            name,
            f"{c['flops'] / 1e9:.1f}",
            f"{c['bytes'] / 1e9:.2f}",
            f"{c['kernels']:,}",
            f"{c['ops']:,}",
            f"{intensity:.1f}",
        )
    return table


@cli
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
    resumed_config = lambda run, runs_dir: records.read_config(records.find(run, runs_dir))  # noqa: E731
    prog = "python -m profiling.census"
    cfg, flags = config.resolve(argv, resumed_config=resumed_config, prog=prog, keep_checkpointed=False)
    if flags.name:
        raise UserError("--name names a new training run; the census makes none (drop it)")
    if flags.resume:  # one rank's step, as the run's own census.json counts it
        envs = records.read_envs(records.find(flags.resume, flags.runs_dir))
        cfg = replace(cfg, batch_size=cfg.batch_size // (envs[-1].get("world_size", 1) if envs else 1))
    counted = census_json(cfg)
    launch_us = roofline.launch_cost_us(cfg.compile)
    forecasts = roofline.forecasts(counted, cfg.precision, cfg.tf32, launch_us)
    if as_json:
        print(json.dumps({**counted, "forecasts": forecasts}, indent=1))
        return
    console = terminal.console()
    s = counted["setting"]
    path = "fused (--fast-kernels)" if s["fast_kernels"] else "FrEIA reference ops"
    shape = f"x{s['scale']}, batch {s['batch_size']}, {s['crop']}x{s['crop']}"
    title = f"one training step at {shape}, {s['precision']}, {path}"
    console.print(census_table(counted, title))
    console.print(forecast_table(forecasts, cfg.precision, cfg.batch_size, launch_us))


if __name__ == "__main__":
    main()
