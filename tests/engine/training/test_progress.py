"""What the trainer shows and keeps (engine/training/progress.py): train.log holds what the console said, Python's
warnings included, each job's lines after the last's."""

import warnings

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
    err = capsys.readouterr().err
    assert "UserWarning: a library's warning" in err and "a step's line" in err  # the console said it all too
