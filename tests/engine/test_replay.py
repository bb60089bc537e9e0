from pathlib import Path

import pytest

from engine import replay, train
from profiling.records import RUNS_VARIABLE, read_jsonl
from tests.conftest import TINY


@pytest.fixture
def spiky_run(image_folder, in_tmp):
    """A run whose steps from 11 on all count as spikes, trained with so small a learning rate (Adam moves each
    weight by about lr) that its last weights are every step's to far below the tolerances."""
    args = ["--name", "spiky", "--steps", "12", "--explosion-factor", "0", "--lr", "1e-30"]
    train.main([*TINY, "--data", str(image_folder), *args])
    return Path("runs/spiky")


def test_replay_reproduces_the_logged_step_and_splits_it_by_sample(spiky_run):
    events = read_jsonl(spiky_run / "explosions.jsonl")
    assert [e["step"] for e in events] == [11, 12]  # judged once 10 steps are known
    event = replay.pick_event(spiky_run, 12)
    rows = replay.replay(spiky_run, event, spiky_run / "checkpoints" / "last.pt")
    *samples, (name, _, _, batch_losses, batch_norm) = rows
    assert name == "batch" and [r[1] for r in samples] == event["images"]
    for key, logged in event["losses"].items():
        assert batch_losses[key] == pytest.approx(logged, rel=1e-4)
        assert batch_losses[key] == pytest.approx(sum(r[3][key] for r in samples) / len(samples), rel=1e-5)
    assert batch_norm == pytest.approx(event["grad_norm"], rel=1e-4)


def test_replay_defaults_to_the_largest_grad_norm_and_names_bad_steps(spiky_run, capsys):
    events = read_jsonl(spiky_run / "explosions.jsonl")
    assert replay.pick_event(spiky_run, None)["grad_norm"] == max(e["grad_norm"] for e in events)
    with pytest.raises(SystemExit):
        replay.main(["spiky", "--step", "3"])
    assert "no saved batch for step 3; steps with one: 11, 12" in capsys.readouterr().err


def test_replay_finds_a_run_under_runs_dir_and_keeps_its_table_whole(spiky_run, in_tmp, capsys, monkeypatch):
    """--runs-dir, or $IRNSCOPE_RUNS, names the runs folder; off a terminal the table is 200 columns wide, so no
    cell is cut to fit 80 (rich's default)."""
    elsewhere = in_tmp / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    replay.main(["spiky", "--step", "12", "--runs-dir", str(in_tmp / "runs")])
    monkeypatch.setenv(RUNS_VARIABLE, str(in_tmp / "runs"))
    replay.main(["spiky", "--step", "11"])
    out = capsys.readouterr().out
    images = {e["step"]: e["images"] for e in read_jsonl(in_tmp / "runs" / "spiky" / "explosions.jsonl")}
    for step in (12, 11):
        assert f"step {step}: " in out and all(f" {name} " in out for name in images[step])
    table = [line for line in out.splitlines() if line.startswith("│")]
    assert "…" not in out and 80 < max(map(len, table)) <= 200


@pytest.mark.parametrize(
    "args, message",
    [
        (["spiky", "--device", "tpu"], "--device tpu: expected auto, cpu, cuda or cuda:N"),
        (["spiky", "--step", "0"], "argument --step: '0': expected an integer >= 1"),
        (["nowhere"], "no run folder 'nowhere'"),
        (["runs"], "runs is a folder but not a run folder"),
    ],
)
def test_bad_replay_flags_are_one_line(in_tmp, args, message, capsys):
    Path("runs").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        replay.main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err
