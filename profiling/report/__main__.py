"""`python -m profiling.report run_42 [--compare run_41] [--plot] [--json]`: where a run's time goes, and
how far its training step is from what the hardware allows."""

import json
import sys

from engine import terminal
from engine.errors import cli, parser
from profiling.records import find
from profiling.report.analysis import analyse
from profiling.report.render import comparison_table, render


@cli
def main(argv=None):
    p = parser("python -m profiling.report", __doc__)
    p.add_argument("run", help="a run folder, or a name under runs/")
    p.add_argument("--compare", metavar="RUN", help="a second run to set beside the first, with ratios")
    p.add_argument("--plot", action="store_true", help="write PNG figures into the run folder")
    p.add_argument("--json", action="store_true", help="print the analysis as JSON")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    run = analyse(find(args.run))
    other = analyse(find(args.compare)) if args.compare else None
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

        for path in write_plots(find(args.run)):
            console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
