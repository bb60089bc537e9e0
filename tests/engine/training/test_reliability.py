"""The fault table of docs/RELIABILITY.md: each fault made for real, and what a run loses to it.

Real processes, real signals to real process groups, real DataLoader workers, real files cut short.
"""

import collections
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from engine import train
from engine.training import checkpoints
from profiling.records import read_jsonl
from profiling.report.__main__ import main as report
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def start(args, cwd, script=None):
    """A training process in a process group of its own, as a batch job's step is."""
    code = script or "from engine import train; train.main()"
    cmd = [sys.executable, "-c", code, *TINY, *args]
    return subprocess.Popen(
        cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def wait_for(path, lines, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and (not path.exists() or len(path.read_text().splitlines()) < lines):
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        time.sleep(0.1)


def losses(folder):
    return {r["step"]: r["loss"] for r in read_jsonl(Path(folder) / "metrics.jsonl") if "loss" in r}


@pytest.fixture
def whole_run(image_folder, in_tmp):
    """An uninterrupted run of 10 steps: the losses every interrupted run must reproduce."""
    train.main([*TINY, "--data", str(image_folder), "--steps", "10", "--name", "whole"])
    return losses("runs/whole")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1", "SIGINT"])
def test_a_signal_to_the_process_group_with_workers_ends_in_a_checkpoint(sig, image_folder, tmp_path):
    """SLURM signals every process of the job: the loader workers ignore it, the trainer finishes its step,
    saves, prints the resume command and exits 0. Nothing beyond the step in flight is lost."""
    proc = start(["--data", str(image_folder), "--steps", "100000", "--name", "sig", "--workers", "2"], tmp_path)
    metrics = tmp_path / "runs" / "sig" / "metrics.jsonl"
    wait_for(metrics, 3, proc)
    os.killpg(proc.pid, getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    state = checkpoints.read(tmp_path / "runs" / "sig" / "checkpoints" / "last.pt")
    assert state["step"] == len(read_jsonl(metrics)) >= 3  # every logged step is in the checkpoint
    said = " ".join(err.decode().split())
    assert f"stopped by {sig}" in said and "python -m engine.train --resume runs/sig" in said


def test_kill_9_mid_step_loses_only_the_steps_since_the_last_checkpoint(image_folder, tmp_path, whole_run):
    proc = start(
        ["--data", str(image_folder), "--steps", "100000", "--name", "k9", "--checkpoint-every", "2"], tmp_path
    )
    wait_for(tmp_path / "runs" / "k9" / "metrics.jsonl", 5, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    saved = checkpoints.newest_step(tmp_path / "runs" / "k9")
    os.chdir(tmp_path)
    train.main(["--resume", "runs/k9", "--steps", "10"])
    resumed = losses("runs/k9")
    assert saved >= 2 and all(resumed[s] == pytest.approx(whole_run[s], rel=1e-6) for s in range(1, 11))


KILL_DURING_SAVE = """
import os, signal, torch
from engine.training import checkpoints
from engine import train
real_save, calls = torch.save, []
def save(obj, f, *args, **kwargs):
    calls.append(f)
    if len(calls) == 2:  # the second checkpoint: half written, then the process dies
        f.write(b"half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
checkpoints.torch.save = save
train.main()
"""


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one(image_folder, tmp_path, whole_run):
    proc = start(["--data", str(image_folder), "--steps", "10", "--name", "mid", "--checkpoint-every", "2"], tmp_path,
                 script=KILL_DURING_SAVE)  # fmt: skip
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    folder = tmp_path / "runs" / "mid" / "checkpoints"
    assert checkpoints.steps_saved(folder.parent) == [2] and (folder / "step_00000004.pt.tmp").exists()
    os.chdir(tmp_path)
    train.main(["--resume", "runs/mid"])
    assert losses("runs/mid") == pytest.approx(whole_run, rel=1e-6)
    assert not list(folder.glob("*.tmp"))


def test_a_truncated_newest_checkpoint_is_skipped_with_one_line(image_folder, in_tmp, whole_run, capsys):
    train.main([*TINY, "--data", str(image_folder), "--steps", "6", "--name", "cut", "--checkpoint-every", "2"])
    newest = checkpoints.step_file("runs/cut", 6)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    capsys.readouterr()
    train.main(["--resume", "runs/cut", "--steps", "10"])
    said = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert len(said) == 1 and "skipped step_00000006.pt" in said[0] and "cut short" in said[0]
    assert losses("runs/cut") == pytest.approx(whole_run, rel=1e-6)  # steps 4 and 5 redone, identically


def test_a_checkpoint_that_is_whole_but_refused_stops_the_resume_with_its_cause(image_folder, in_tmp, capsys):
    """Not damage: the older checkpoints were written the same way, so the resume stops instead of skipping."""
    train.main([*TINY, "--data", str(image_folder), "--steps", "4", "--name", "odd", "--checkpoint-every", "2"])
    torch.save({"step": 4, "extra": collections.OrderedDict(a=Fraction(1, 3))}, checkpoints.step_file("runs/odd", 4))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--resume", "runs/odd", "--steps", "6"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "of type fractions.Fraction" in err and "skipped" not in err


def test_a_full_disk_during_a_checkpoint_stops_with_one_line_and_the_previous_checkpoint(
    image_folder, in_tmp, capsys, monkeypatch
):
    """The checkpoint of step 4 goes into /dev/full, where every write fails with ENOSPC: the real write path
    meets a real full device (placed once the resume has cleaned up what a crash leaves aside)."""
    train.main([*TINY, "--data", str(image_folder), "--steps", "2", "--name", "full", "--checkpoint-every", "2"])
    real_load = checkpoints.load_newest

    def load_then_fill_the_disk(run, log=print):
        state = real_load(run, log)
        Path("runs/full/checkpoints/step_00000004.pt.tmp").symlink_to("/dev/full")
        return state

    monkeypatch.setattr(checkpoints, "load_newest", load_then_fill_the_disk)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--resume", "runs/full", "--steps", "10"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and len(errors) == 1
    assert (
        "cannot write the checkpoint of step 4 (No space left on device); the checkpoint of step 2 is intact"
        in errors[0]
    )
    assert checkpoints.read("runs/full/checkpoints/last.pt")["step"] == 2
    assert not list(Path("runs/full/checkpoints").glob("*.tmp")) and len(read_jsonl("runs/full/metrics.jsonl")) == 4


def test_a_full_disk_under_the_records_stops_with_one_line_and_keeps_the_checkpoint(image_folder, in_tmp, capsys):
    """metrics.jsonl on /dev/full: the first record a resumed job writes meets a real ENOSPC."""
    train.main([*TINY, "--data", str(image_folder), "--steps", "2", "--name", "rec", "--checkpoint-every", "2"])
    metrics = Path("runs/rec/metrics.jsonl")
    metrics.unlink()
    metrics.symlink_to("/dev/full")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--resume", "runs/rec", "--steps", "6"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and len(errors) == 1 and "Traceback" not in err
    assert "No space left on device; free space on that disk" in errors[0] and "--resume" in errors[0]
    assert checkpoints.read("runs/rec/checkpoints/last.pt")["step"] == 2


def test_a_half_written_record_line_neither_stops_the_report_nor_a_resume(image_folder, in_tmp, whole_run, capsys):
    train.main([*TINY, "--data", str(image_folder), "--steps", "5", "--name", "torn", "--checkpoint-every", "5"])
    for name in ("metrics.jsonl", "phases.jsonl"):
        path = Path("runs/torn") / name
        path.write_text(path.read_text() + '{"step": 5, "los')  # a crash mid-write
    report(["torn"])
    assert "the training step, by phase" in capsys.readouterr().out
    train.main(["--resume", "runs/torn", "--steps", "10"])
    assert losses("runs/torn") == pytest.approx(whole_run, rel=1e-6)  # the lines after the torn one read fine
    assert len(read_jsonl("runs/torn/phases.jsonl")) == 10


def test_a_damaged_config_file_is_one_line_for_the_report_and_resume(image_folder, in_tmp, capsys):
    train.main([*TINY, "--data", str(image_folder), "--steps", "2", "--name", "bad"])
    Path("runs/bad/config.json").write_text('{"scale": 2, "crop"')
    capsys.readouterr()
    for command in (lambda: report(["runs/bad"]), lambda: train.main(["--resume", "runs/bad"])):
        with pytest.raises(SystemExit) as exit_info:
            command()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "runs/bad/config.json" in err and err.count("\n") == 1


def test_sigterm_to_torchrun_reaches_every_rank_and_ends_in_a_checkpoint(image_folder, tmp_path):
    """As SLURM signals a job step run by torchrun: torchrun forwards SIGTERM to its ranks, which finish the
    step, agree to stop and write the checkpoint; torchrun itself then exits non-zero (chain jobs with
    --dependency=afterany)."""
    args = [
        *TINY,
        "--batch-size",
        "4",
        "--data",
        str(image_folder),
        "--steps",
        "100000",
        "--name",
        "tr",
        "--workers",
        "2",
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "engine.train"]
    proc = subprocess.Popen([*cmd, *args], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "runs" / "tr" / "metrics.jsonl"
    wait_for(metrics, 3, proc)
    proc.send_signal(signal.SIGTERM)  # torchrun alone
    _, err = proc.communicate(timeout=120)
    state = checkpoints.read(tmp_path / "runs" / "tr" / "checkpoints" / "last.pt")
    assert state["step"] == len(read_jsonl(metrics)) >= 3 and state["ranks_agree"], err.decode()[-2000:]
    assert "stopped by SIGTERM" in " ".join(err.decode().split())


def test_every_test_the_fault_table_names_exists():
    """Each `tests/...py::test_name` (or `::test_name`, of the path before it) in docs/RELIABILITY.md is a test
    function of that file; a bare `test_name` is one of some test file."""
    import ast
    import re

    def functions(path):
        return {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}

    every = set().union(*(functions(p) for p in (REPO / "tests").rglob("test_*.py")))
    missing, path = [], None
    for ref in re.findall(
        r"`((?:tests/[\w/]+\.py)?(?:::)?test_\w+)(?:\[[^\]]*\])?`", (REPO / "docs" / "RELIABILITY.md").read_text()
    ):
        file, _, name = ref.rpartition("::") if "::" in ref else ("", "", ref)
        path = REPO / file if file else path if ref.startswith("::") else None
        if name not in (functions(path) if path else every):
            missing.append(ref)
    files = re.findall(r"`(tests/[\w/]+\.py)", (REPO / "docs" / "RELIABILITY.md").read_text())
    assert not missing and all((REPO / f).is_file() for f in files), (missing, files)


SECOND_CTRL_C = """
import os, signal
from engine import train
from engine.training import loop
real, calls = loop.Loop.iteration, []
def iteration(self, step, batches):
    calls.append(step)
    if step == 3:  # a user presses Ctrl-C twice: the first asks for a stop, the second leaves at once
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    return real(self, step, batches)
loop.Loop.iteration = iteration
train.main()
"""


def test_a_second_ctrl_c_leaves_at_once_in_one_line_and_keeps_the_checkpoints(image_folder, tmp_path):
    args = ["--data", str(image_folder), "--steps", "100", "--name", "twice", "--checkpoint-every", "2"]
    proc = start(args, tmp_path, script=SECOND_CTRL_C)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.decode().splitlines() if line.startswith("error:")]
    assert proc.returncode == 130 and len(lines) == 1 and "interrupted (Ctrl-C)" in lines[0], err.decode()[-2000:]
    assert "Traceback" not in err.decode()
    assert checkpoints.steps_saved(tmp_path / "runs" / "twice") == [2]  # the one written before: whole
    assert checkpoints.read(checkpoints.step_file(tmp_path / "runs" / "twice", 2))["step"] == 2


def test_ctrl_c_while_the_trainer_starts_is_one_line(monkeypatch, capsys):
    """The command imports nothing heavy itself (a subprocess shows torch is not loaded by it): an interrupt while
    torch and the model load, inside main, is cli's one line."""
    loads = subprocess.run(
        [sys.executable, "-c", "import sys, engine.train; print('torch' in sys.modules)"],
        cwd=REPO, env=ENV, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert loads.stdout.strip() == "False"

    class Interrupted:
        def __getattr__(self, name):
            raise KeyboardInterrupt  # as if Ctrl-C arrived while the training modules were being imported

    monkeypatch.setitem(sys.modules, "engine.training.job", Interrupted())
    with pytest.raises(SystemExit) as exit_info:
        train.main([])
    err = capsys.readouterr().err
    assert exit_info.value.code == 130 and err.count("\n") == 1 and "interrupted (Ctrl-C)" in err


def test_a_run_folder_that_refuses_writes_is_one_line_and_keeps_the_checkpoint(image_folder, in_tmp, capsys, immutable):
    train.main([*TINY, "--data", str(image_folder), "--steps", "2", "--name", "locked", "--checkpoint-every", "2"])
    immutable(Path("runs/locked"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--resume", "runs/locked", "--steps", "4"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Operation not permitted" in err, err
    assert "give yourself access to it, or use another folder" in err and "--resume" in err
    assert checkpoints.read(checkpoints.step_file("runs/locked", 2))["step"] == 2
