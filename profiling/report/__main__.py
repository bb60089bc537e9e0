"""`python -m profiling.report run_42 [--compare run_41] [--plot] [--json] [--runs-dir DIR]`: where a run's time
goes, and how far its training step is from what the hardware allows."""

import json
import sys

from engine import terminal
from engine.errors import cli, parser
from profiling.records import RUNS_VARIABLE, find
from profiling.report.analysis import analyse
from profiling.report.render import comparison_table, render


@cli
def main(argv=None):
    p = parser("python -m profiling.report", __doc__)
    p.add_argument("run", help="a run folder, or a name under the runs folder")
    p.add_argument("--compare", metavar="RUN", help="a second run to set beside the first, with ratios")
    p.add_argument(
        "--runs-dir", metavar="DIR", help=f"where run names are looked up (default: ${RUNS_VARIABLE}, else runs/)"
    )
    p.add_argument("--plot", action="store_true", help="write PNG figures into the run folder")
    p.add_argument("--json", action="store_true", help="print the analysis as JSON")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    folder = find(args.run, args.runs_dir)
    run = analyse(folder)
    other = analyse(find(args.compare, args.runs_dir)) if args.compare else None
    if args.json:
        print(json.dumps({"run": run, "compare": other} if other else run, indent=1, default=str))
        return
    console = terminal.console()
    render(console, run)
    if other:
        console.print(comparison_table(run, other))
        console.print(
            f"bottleneck: {run['run']}: {run['verdict']['label']}; {other['run']}: {other['verdict']['label']}"
        )
    if args.plot:
        from profiling.report.plots import write_plots  # matplotlib loads only when figures are asked for

        for path in write_plots(folder):
            console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
