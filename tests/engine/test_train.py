import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor

import engine
from engine import train
from engine.data import crops, image_files, tensors
from engine.training import config, job, run_folder, start
from engine.training.explosion_guard import ExplosionGuard
from engine.training.step import Trainer
from engine.training.stopping import TimeLimit
from kernels.precision import tf32_convolutions
from profiling.records import read_jsonl
from profiling.runtime.timer import PhaseTimer
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[2]


def run(args, folder):
    train.main([*TINY, "--data", str(folder), *args])


def losses(run_dir):
    return [r["loss"] for r in read_jsonl(Path(run_dir) / "metrics.jsonl")]


def tiny_trainer(image_folder, tmp_path, **overrides):
    cfg, _ = config.resolve([*TINY, "--data", str(image_folder)])
    cfg = replace(cfg, **overrides)
    images = image_files.read_folder(image_folder, cfg.crop)
    batch = next(iter(crops.loader(crops.training_set(images, cfg.scale), cfg, 0)))
    guard = ExplosionGuard(
        tmp_path, cfg.explosion_factor, cfg.explosion_window, cfg.max_bad_steps, images.names, cfg.grad_clip
    )
    return Trainer(cfg, torch.device("cpu")), batch, guard


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_one_step_changes_the_weights_and_is_deterministic(image_folder, tmp_path):
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        trainer, batch, guard = tiny_trainer(image_folder, tmp_path)
        before = params(trainer.model)
        assert trainer.step(batch, PhaseTimer("cpu"), guard, 0) is None  # its values come one step late
        out = trainer.drain(guard)
        after = params(trainer.model)
        assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
        results.append((out.losses, after))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1], strict=True))


def test_loss_falls_over_a_few_dozen_steps(image_folder, in_tmp):
    run(["--steps", "40", "--name", "fall", "--lr", "2e-3"], image_folder)
    values = losses("runs/fall")
    assert len(values) == 40 and sum(values[-5:]) < 0.7 * sum(values[:5])


def test_run_folder_contents(image_folder, in_tmp):
    run(["--steps", "3", "--name", "r", "--val", str(image_folder), "--val-every", "3"], image_folder)
    folder = Path("runs/r")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["steps"] == 3 and cfg["scale"] == 2
    env = read_jsonl(folder / "env.jsonl")[0]
    assert env["versions"]["torch"] == torch.__version__ and env["device"]["type"] == "cpu" and "command" in env
    record = read_jsonl(folder / "metrics.jsonl")[-1]
    for key in ("forw_fit", "forw_ce", "back_rec", "grad_norm", "lr", "images_per_s", "val_psnr_y", "val_ssim_y"):
        assert key in record
    assert len(read_jsonl(folder / "phases.jsonl")) == 3 and read_jsonl(folder / "gpu.jsonl")
    assert (folder / "samples" / "step_00000003.png").stat().st_size > 0
    assert engine.load(folder / "checkpoints" / "last.pt").scale == 2


@pytest.mark.parametrize("tf32", [True, False])
@pytest.mark.parametrize("before", ["mixed APIs", "a level above"])
def test_tf32_is_the_run_s_choice_recorded(image_folder, in_tmp, fp32_precision_restored, tf32, before):
    """--tf32 sets the convolutions' TF32 whatever the process had: a mix of PyTorch's two APIs (in which
    reading the legacy flag raises), or the opposite set on a level above; the run records it, and its
    probe leaves the matmul setting as it found it."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    matmul.fp32_precision = "tf32"
    if before == "mixed APIs":
        cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = "ieee" if tf32 else "tf32", "tf32"
    else:
        cudnn.fp32_precision = "ieee" if tf32 else "tf32"
    run(["--steps", "1", "--name", "t", "--tf32", str(tf32).lower()], image_folder)
    assert read_jsonl(Path("runs/t/env.jsonl"))[0]["backends"]["conv_tf32"] is tf32 is tf32_convolutions()
    if before == "mixed APIs":
        assert cudnn.allow_tf32 is tf32  # no mix left: the legacy flag reads again
    assert matmul.fp32_precision == "tf32"  # the probe measured as the convolutions run: "ieee" when not tf32


def test_each_step_logs_the_learning_rate_it_used(image_folder, in_tmp):
    run(["--steps", "3", "--name", "lr", "--lr-milestones", "1,2"], image_folder)
    assert [r["lr"] for r in read_jsonl(Path("runs/lr/metrics.jsonl"))] == pytest.approx([2e-4, 1e-4, 5e-5])


def test_zero_intervals_validate_and_checkpoint_only_at_the_end(image_folder, in_tmp):
    run(
        ["--steps", "3", "--name", "z", "--val", str(image_folder), "--val-every", "0", "--checkpoint-every", "0"],
        image_folder,
    )
    records = read_jsonl(Path("runs/z/metrics.jsonl"))
    assert ["val_psnr_y" in r for r in records] == [False, False, True]
    assert torch.load("runs/z/checkpoints/last.pt", weights_only=True)["step"] == 3


def test_resumed_run_gives_the_losses_of_an_uninterrupted_one_with_and_without_the_data_cache(image_folder, in_tmp):
    run(["--steps", "8", "--name", "whole", "--data-cache", "off"], image_folder)
    run(["--steps", "5", "--name", "split"], image_folder)
    train.main(["--resume", "runs/split", "--steps", "8"])
    assert losses("runs/split") == losses("runs/whole")
    assert [job["data"]["decoded_in"] for job in read_jsonl(Path("runs/split/env.jsonl"))] == [
        os.path.join(os.environ["XDG_CACHE_HOME"], "irnscope", "data")
    ] * 2


def test_a_data_cache_that_cannot_be_written_is_one_line_and_the_run_goes_on(image_folder, in_tmp, capsys):
    Path("a_file").write_text("")
    run(["--steps", "2", "--name", "c", "--data-cache", "a_file/cache"], image_folder)
    said = [line for line in capsys.readouterr().err.splitlines() if "data cache" in line]
    where = Path("a_file/cache").absolute()  # config.json keeps --data-cache absolute, and the line says so
    assert said == [f"cannot create the data cache in {where} (Not a directory): the images are decoded into "
                    "memory for this job"]  # fmt: skip
    assert len(losses("runs/c")) == 2 and read_jsonl(Path("runs/c/env.jsonl"))[0]["data"]["decoded_in"] == "memory"


def test_time_limit_stops_with_a_checkpoint_and_the_resume_command(image_folder, in_tmp, capsys, monkeypatch):
    """On a job clock that advances 100 s per reading (one reading per step), a 1500 s limit keeps a margin of
    2 x 10 s for a checkpoint not yet timed plus 3 x the slowest real step (well under 30 s): after step k the job
    is at 100k s, so the run stops after step 14 or 15 (16 with no margin at all), not before and not after."""
    readings = iter(range(100, 10**8, 100))
    monkeypatch.setattr(job, "TimeLimit", lambda seconds: TimeLimit(seconds, clock=lambda: next(readings)))
    run(["--steps", "1000", "--name", "tl", "--time-limit", "1500s"], image_folder)
    state = torch.load("runs/tl/checkpoints/last.pt", weights_only=True)
    assert state["step"] in (14, 15) and state["step"] == len(losses("runs/tl"))
    err = capsys.readouterr().err.replace("\n", "")
    assert f"stopped by time limit at step {state['step']}" in err and "python -m engine.train --resume runs/tl" in err


def test_sigterm_leaves_a_loadable_checkpoint(image_folder, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "engine.train",
        *TINY,
        "--data",
        str(image_folder),
        "--steps",
        "100000",
        "--name",
        "sig",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "runs" / "sig" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    model = engine.load(tmp_path / "runs" / "sig" / "checkpoints" / "last.pt")
    state = torch.load(tmp_path / "runs" / "sig" / "checkpoints" / "last.pt", weights_only=True)
    assert model.scale == 2 and state["step"] == len(read_jsonl(metrics))
    assert b"SIGTERM" in err


def poison(monkeypatch, steps):
    """Make the network's output NaN on the given call numbers (of real steps: the census at the start of a
    run traces one on fake tensors)."""
    real, calls = Trainer.step.__globals__["network_passes"], {"n": 0}

    def passes(*args, **kwargs):
        y, z, reconstruction = real(*args, **kwargs)
        if isinstance(y, FakeTensor):
            return y, z, reconstruction
        calls["n"] += 1
        return (y * float("nan"), z, reconstruction) if calls["n"] in steps else (y, z, reconstruction)

    monkeypatch.setitem(Trainer.step.__globals__, "network_passes", passes)


def optimizer_state(trainer):
    return [{k: v.clone() for k, v in s.items()} for s in trainer.optimizer.state.values()]


def assert_same_state(a, b):
    assert len(a) == len(b) and all(x.keys() == y.keys() for x, y in zip(a, b, strict=True))
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_non_finite_step_is_skipped_on_the_device_and_recorded(image_folder, tmp_path, monkeypatch, precision):
    trainer, batch, guard = tiny_trainer(image_folder, tmp_path, precision=precision)
    if precision == "fp16":  # IRN's losses are sums over pixels: the default scale 2^16 overflows fp16 at once
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    poison(monkeypatch, {2})
    timer = PhaseTimer("cpu")
    assert trainer.step(batch, timer, guard, 6) is None
    weights, state, scale = params(trainer.model), optimizer_state(trainer), trainer.scaler.get_scale()
    assert trainer.step(batch, timer, guard, 7).event == "ok"  # step 6, read now
    assert all(torch.equal(a, b) for a, b in zip(weights, params(trainer.model), strict=True))
    assert_same_state(state, optimizer_state(trainer))  # step count included
    assert trainer.scheduler.last_epoch == 2  # the schedule counts steps, skipped ones too
    skipped = trainer.drain(guard)
    assert skipped.step == 7 and skipped.event == "skipped" and not math.isfinite(skipped.losses["forw_fit"])
    if precision == "fp16":  # the scaler stays consistent: it backed off and the next step runs
        assert trainer.scaler.get_scale() == scale / 2
    event = read_jsonl(tmp_path / "explosions.jsonl")[0]
    assert event["step"] == 7 and event["kind"] == "non-finite" and len(event["images"]) == 2
    saved = torch.load(tmp_path / event["batch_file"], weights_only=True)
    assert torch.equal(saved["hr"], batch["hr"]) and saved["noise"].shape == (2, 9, 8, 8)
    trainer.step(batch, timer, guard, 8)
    assert trainer.drain(guard).event == "ok" and not all(
        torch.equal(a, b) for a, b in zip(weights, params(trainer.model), strict=True)
    )


def test_the_late_values_are_the_step_s_own(image_folder, tmp_path):
    """Losses and grad norm of step n, read one step late, equal those of n's batch and weights."""
    from engine.replay import losses_and_grad_norm

    trainer, batch, guard = tiny_trainer(image_folder, tmp_path)
    timer = PhaseTimer("cpu")
    trainer.step(batch, timer, guard, 0)
    second = {**batch, "hr": batch["hr"].flip(-1).contiguous()}
    with torch.no_grad():
        expected_weights = copy.deepcopy(trainer.model)  # the weights step 1 sees
    result0 = trainer.step(second, timer, guard, 1)
    result1 = trainer.drain(guard)
    hr = tensors.to_float(second["hr"])
    losses, norm = losses_and_grad_norm(expected_weights, hr, second["lr_ref"], second["noise"], trainer.cfg)
    assert (result0.step, result1.step) == (0, 1)
    assert result1.losses == pytest.approx(losses, rel=1e-5) and result1.grad_norm == pytest.approx(norm, rel=1e-4)
    assert result1.lr == trainer.cfg.lr


def test_fp16_overflow_is_left_to_the_scaler_not_recorded_as_an_explosion(image_folder, tmp_path):
    trainer, batch, guard = tiny_trainer(image_folder, tmp_path, precision="fp16")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**126)  # scaled gradients overflow fp32
    before = params(trainer.model)
    trainer.step(batch, PhaseTimer("cpu"), guard, 0)
    out = trainer.drain(guard)
    assert out.event == "overflow" and out.grad_norm is None
    assert all(math.isfinite(v) for v in out.losses.values())
    assert all(torch.equal(a, b) for a, b in zip(before, params(trainer.model), strict=True))
    assert trainer.scaler.get_scale() == 2.0**125  # backed off
    assert not (tmp_path / "explosions.jsonl").exists() and not guard.history["update"]


def test_too_many_bad_steps_stop_the_run_and_keep_the_last_good_checkpoint(image_folder, in_tmp, monkeypatch, capsys):
    poison(monkeypatch, set(range(5, 100)))
    with pytest.raises(SystemExit) as exit_info:
        run(
            [
                "--steps",
                "50",
                "--name",
                "nan",
                "--checkpoint-every",
                "4",
                "--max-bad-steps",
                "3",
                "--explosion-batches-kept",
                "2",
            ],
            image_folder,
        )
    assert exit_info.value.code == 2
    assert "3 non-finite steps in a row" in capsys.readouterr().err
    assert torch.load("runs/nan/checkpoints/last.pt", weights_only=True)["step"] == 4
    events = read_jsonl("runs/nan/explosions.jsonl")
    assert [e["step"] for e in events] == [5, 6, 7]  # the 5th call is step 5: steps count from 1
    assert [e["batch_file"] is not None for e in events] == [True, True, False]  # batches kept: 2
    assert len(list(Path("runs/nan/explosions").glob("*.pt"))) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/nonexistent"], "no folder at /nonexistent"),
        (["--resume", "runs/none"], "no run folder 'runs/none'"),
        (["--batchsize", "3"], "did you mean --batch-size"),
        (["--batch-size", "-1"], "--batch-size -1: expected an integer >= 1"),
        (["--crop", "30"], "--crop 30: expected a multiple of the scale 4, at least 8"),
        (["--crop", "33"], "--crop 33: expected a multiple of the scale 4, at least 8"),
        (["--lr", "nan"], "--lr nan: expected a finite number > 0"),
        (["--workers", "-3"], "--workers -3: expected an integer >= 0"),
        (["--device", "tpu"], "--device tpu: expected auto, cpu, cuda or cuda:N"),
        (["--precision", "fp8"], "--precision fp8: expected fp32, bf16 or fp16"),
        (["--precision", "bf16", "--device", "cpu"], "--precision bf16 needs a GPU"),
        (["--device", "cuda"], "needs a CUDA GPU") if not torch.cuda.is_available() else (["--scale", "5"], "power of"),
        (["--crop", "4000"], "no embedded photograph is 4000x4000 or larger"),
    ],
)
def test_bad_input_gives_one_line(args, message, in_tmp, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1
    assert not list(Path("runs").glob("*")), "a refused run leaves no run folder behind"


def test_help_lists_every_flag_and_exits_0(in_tmp, capsys):
    for flag in ("--help", "-h"):
        with pytest.raises(SystemExit) as exit_info:
            train.main([flag])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert all(config.flag(key) in out for key in config.KEYS) and "--resume RUN" in out


def test_resume_folder_without_checkpoint(image_folder, in_tmp, capsys):
    (in_tmp / "runs" / "empty").mkdir(parents=True)
    (in_tmp / "runs" / "empty" / "config.json").write_text(
        json.dumps(config.resolve([*TINY, "--data", str(image_folder)])[0].to_json())
    )
    with pytest.raises(SystemExit):
        train.main(["--resume", "runs/empty"])
    assert "no whole checkpoint in runs/empty/checkpoints" in capsys.readouterr().err


def test_fine_tuning_takes_weights_only_with_a_fresh_optimiser(image_folder, in_tmp):
    run(["--steps", "3", "--name", "base"], image_folder)
    base = torch.load("runs/base/checkpoints/last.pt", weights_only=True)
    run(
        ["--steps", "2", "--name", "tuned", "--init-from", "runs/base/checkpoints/last.pt", "--lr", "1e-30"],
        image_folder,
    )
    tuned = torch.load("runs/tuned/checkpoints/last.pt", weights_only=True)
    for key, value in base["model"].items():  # an lr of 1e-30 leaves the base weights as they were
        torch.testing.assert_close(tuned["model"][key], value, rtol=0, atol=1e-20)
    assert tuned["scheduler"]["last_epoch"] == 2 and tuned["samples_seen"] == 2 * 2
    assert all(s["step"].item() == 2 for s in tuned["optimizer"]["state"].values())  # not 3 + 2


def test_fine_tuning_from_an_official_release_and_a_mismatched_network(image_folder, in_tmp, capsys):
    from tests.official_irn import OfficialIRN, randomize

    torch.save(randomize(OfficialIRN(2, blocks=1), std=0.01).state_dict(), "IRN_x2.pth")
    run(["--steps", "1", "--name", "official", "--init-from", "IRN_x2.pth", "--growth", "32"], image_folder)
    assert read_jsonl(Path("runs/official/metrics.jsonl"))[0]["loss"] > 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(["--steps", "1", "--name", "mismatch", "--init-from", "IRN_x2.pth"], image_folder)  # growth 4 here
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "growth 32 (not 4)" in err and err.count("\n") == 1
    assert not Path("runs/mismatch").exists()


def test_tensorboard_mirrors_the_records(image_folder, in_tmp):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(["--steps", "4", "--name", "tb", "--tensorboard", "--val", str(image_folder), "--val-every", "2"], image_folder)
    events = EventAccumulator("runs/tb/tensorboard", size_guidance={"images": 0}).Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert losses == pytest.approx([r["loss"] for r in read_jsonl(Path("runs/tb/metrics.jsonl"))], rel=1e-6)
    assert [e.step for e in events.Scalars("validation/psnr_y")] == [2, 4]
    assert len(events.Scalars("phases_ms/forward")) == 4 and len(events.Images("samples")) == 2


def test_wandb_mirrors_the_records_offline_and_a_resume_continues_its_run(image_folder, in_tmp, monkeypatch):
    """The real wandb package, offline (no network): what reaches its runs' log is what the records hold, at
    their step numbers, and the resumed job logs into the same W&B run (one offline run id for the folder)."""
    import wandb.sdk.wandb_run

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged, real_log = [], wandb.sdk.wandb_run.Run.log

    def log(run, data, *args, **kwargs):
        logged.append((run.id, data))
        return real_log(run, data, *args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", log)
    args = ["--name", "wb", "--wandb", "--val", str(image_folder), "--val-every", "2", "--checkpoint-every", "2"]
    run(["--steps", "2", *args], image_folder)
    train.main(["--resume", "runs/wb", "--steps", "4"])
    ids = {run_id for run_id, _ in logged}
    assert len(ids) == 1 and len(list(Path("runs/wb/wandb").glob(f"offline-run-*-{ids.pop()}"))) == 2  # two jobs
    losses = {d["step"]: d["train/loss"] for _, d in logged if "train/loss" in d}
    assert losses == {r["step"]: pytest.approx(r["loss"]) for r in read_jsonl(Path("runs/wb/metrics.jsonl"))}
    assert sorted(d["step"] for _, d in logged if "validation/psnr_y" in d) == [2, 4]
    assert sorted(d["step"] for _, d in logged if "phases_ms/forward" in d) == [1, 2, 3, 4]
    assert sum("samples" in d for _, d in logged) == 2


@pytest.mark.parametrize("flag", ["tensorboard", "wandb"])
def test_a_mirror_without_its_package_is_one_line(image_folder, in_tmp, capsys, monkeypatch, flag):
    monkeypatch.setitem(sys.modules, flag, None)  # as if it were not installed
    with pytest.raises(SystemExit) as exit_info:
        run(["--steps", "1", f"--{flag}"], image_folder)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"pip install {flag}" in err and err.count("\n") == 1


def test_invertible_backprop_trains_as_standard_backprop_and_checkpoints_cross_over(image_folder, in_tmp):
    """Same losses step for step (fp32 sums in another order), and a run switches it on or off on resume."""
    run(["--steps", "6", "--name", "standard"], image_folder)
    run(["--steps", "3", "--name", "inverted", "--invertible-backprop"], image_folder)
    train.main(["--resume", "runs/inverted", "--steps", "6", "--invertible-backprop", "false"])
    run(["--steps", "3", "--name", "back", "--checkpoint-every", "3"], image_folder)
    train.main(["--resume", "runs/back", "--steps", "6", "--invertible-backprop"])
    standard = losses("runs/standard")
    assert losses("runs/inverted") == pytest.approx(standard, rel=1e-4)
    assert losses("runs/back") == pytest.approx(standard, rel=1e-4)
    assert [job["start_step"] for job in read_jsonl(Path("runs/inverted/env.jsonl"))] == [0, 3]  # both jobs
    assert json.loads(Path("runs/back/config.json").read_text())["invertible_backprop"] is True


def test_two_jobs_starting_at_once_take_two_run_folders(in_tmp, monkeypatch):
    """Between finding the next free run_N and creating it, another job may create it: take the next one."""
    real_next_free, taken = run_folder.next_free, Path("runs/run_1")

    def raced(root):
        folder = real_next_free(root)
        if folder == taken and not folder.exists():
            folder.mkdir(parents=True)  # the other job, a moment earlier
        return folder

    monkeypatch.setattr(run_folder, "next_free", raced)
    assert run_folder.create() == Path("runs/run_2") and taken.is_dir()


def test_one_gpu_index_for_several_ranks_is_one_line():
    with pytest.raises(engine.UserError, match="would put the 4 ranks of this node on one GPU.*--device cuda"):
        start.pick_device(SimpleNamespace(device="cuda:0", precision="fp32"), ranks_here=4)
