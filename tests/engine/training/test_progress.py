"""What the trainer shows and keeps (engine/training/progress.py): train.log holds what the console said, Python's
warnings included, each job's lines after the last's."""

import warnings

from rich.table import Table

from engine import terminal
from engine.training.progress import Transcript


def test_train_log_keeps_the_console_s_lines_and_the_warnings_of_each_job(tmp_path, capsys):
    log, transcript = tmp_path / "train.log", Transcript()
    console = terminal.console(file=transcript)
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        transcript.begin()
        console.print("[bold]start-up[/]: said before the run folder exists")
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
        transcript.keep_in(log)
        console.print("a step's line")
        console.print(table_of_two_rows())
        transcript.end()
        assert warnings.showwarning is before  # the job's end puts Python's own back
        transcript.begin()
        transcript.keep_in(log)
        console.print("the next job's line")
        transcript.end()
    kept = log.read_text().splitlines()
    warned = [line for line in kept if "UserWarning: a library's warning" in line]
    assert kept[0] == "start-up: said before the run folder exists" and len(warned) == 1
    assert kept.index(warned[0]) < kept.index("a step's line") < kept.index("the next job's line")
    assert "\x1b[" not in log.read_text()  # plain text
    assert not [line for line in kept if line != line.rstrip()]  # no padding to the console's width
    err = capsys.readouterr().err
    assert "UserWarning: a library's warning" in err and "a step's line" in err  # the console said it all too


def table_of_two_rows():
    """As the run's summary is laid out: the short row's cell padded to the long one's width."""
    table = Table(show_header=False, box=None)
    table.add_row("steps", "0 -> 2")
    table.add_row("loss", "first 7792.06 -> last 296.92 (mean of 10 steps)")
    return table
