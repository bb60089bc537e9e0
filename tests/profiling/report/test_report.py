import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import train
from engine.training import config
from profiling import records
from profiling.records import RUNS_VARIABLE, read_jsonl
from profiling.report import render
from profiling.report.__main__ import main as report
from profiling.report.analysis import (
    analyse,
    during_steady_steps,
    gpu_stats,
    loss_summary,
    progress,
    steady,
    training_gpu_stats,
)
from tests.conftest import TINY, smooth_image


def tiny_run(image_folder, name, *args):
    train.main([*TINY, "--data", str(image_folder), "--name", name, *args])
    return Path("runs") / name


@pytest.fixture(scope="module")
def trained_twice(tmp_path_factory):
    """Two finished runs, trained once for this module's tests, which read them (and add beside them)."""
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    (root / "hr").mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(rng, 40 + 8 * i, 48)).save(root / "hr" / f"img{i}.png")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        runs = tiny_run(root / "hr", "a", "--steps", "14"), tiny_run(root / "hr", "b", "--steps", "14", "--growth", "8")
    return root, runs


@pytest.fixture
def two_runs(trained_twice, monkeypatch):
    root, runs = trained_twice
    monkeypatch.chdir(root)
    return runs


def test_report_renders_a_real_run(two_runs, capsys):
    report([str(two_runs[0])])
    out = capsys.readouterr().out
    verdict = analyse(two_runs[0])["verdict"]
    for text in (
        "run runs/a",
        "throughput",
        "the training step, by phase",
        "backward",
        "bottleneck",
        "MFU",
        "this step on other GPUs",
        "losses",
        "commit",
    ):
        assert text in out
    assert f"{verdict['label']}:" in " ".join(out.split())  # the analysis's verdict, as the panel shows it
    assert "│ h2d " in out and "│ codec " not in out  # a phase the run never ran has no row


def test_a_cpu_run_is_judged_against_its_own_floors(in_tmp):
    """A CPU's floors come from its own probe: 1e10 FLOPs at a measured 0.5 TFLOP/s is 20 ms, 1,000 launches at
    10 us 10 ms, so a 40 ms step is compute-bound at twice its floor, MFU 1e10 / 0.040 s / 0.5e12 = 50%."""
    folder = recorded_gpu_run(Path("runs/cpu"), census_extra={"flops_per_step": 1e10, "kernels_per_step": 1000})
    env = {"device": {"type": "cpu", "name": "x86_64"}, "world_size": 1, "backends": {"conv_tf32": False}}
    (folder / "env.jsonl").write_text(json.dumps(env | {"probe": {"launch_us": 10.0, "matmul_tflops": 0.5}}) + "\n")
    run = analyse(folder)
    own = run["hardware"]["own"]
    assert own["peak_source"].startswith("measured bf16 matrix product on this cpu")
    assert (own["compute_ms"], own["launch_ms"]) == (pytest.approx(20.0), pytest.approx(10.0))
    assert own["bound"] == "compute" and run["hardware"]["vs_floor"] == pytest.approx(2.0)
    assert own["mfu"] == pytest.approx(0.5)
    assert run["verdict"]["label"] == "compute-bound" and "its compute floor" in run["verdict"]["evidence"]


def test_compare_two_runs_side_by_side(two_runs, capsys):
    first, second = analyse(two_runs[0]), analyse(two_runs[1])
    rows = {name: (x, y) for name, x, y in render.comparison_rows(first, second)}
    assert rows["step ms"] == (first["phases"]["step_ms"], second["phases"]["step_ms"])
    assert rows["last loss"] == (first["losses"]["loss"]["last"], second["losses"]["loss"]["last"])
    report([str(two_runs[0]), "--compare", "b"])
    out = capsys.readouterr().out
    it_row = next(line for line in out.splitlines() if " it/s " in line)
    it_first, it_second = rows["it/s"]
    assert f"{it_second / it_first:.2f}x" in it_row and "runs/a vs runs/b" in out
    assert "ratio = runs/b / runs/a" in out  # which run the ratio divides by


def test_json_for_scripts(two_runs, capsys):
    report(["a", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["progress"]["last_step"] == 14 and result["phases"]["phases"]["forward"]["mean_ms"] > 0


def test_crashed_run_with_truncated_files_still_reports(two_runs, capsys):
    crashed = Path("runs/crashed")
    shutil.copytree(two_runs[0], crashed)
    for name in ("metrics.jsonl", "phases.jsonl", "gpu.jsonl"):
        text = (crashed / name).read_text()
        (crashed / name).write_text(text[: len(text) * 2 // 3])  # cut mid-line, as a killed process leaves it
    shutil.rmtree(crashed / "checkpoints")
    complete = (crashed / "metrics.jsonl").read_text().count("\n")
    report(["crashed"])
    assert "the training step, by phase" in capsys.readouterr().out
    progress = analyse(crashed)["progress"]
    assert progress["last_step"] == complete < 14 and not progress["finished"]


def test_plots_draw_the_run_s_records(two_runs):
    import matplotlib.pyplot as plt

    from profiling.report import plots

    report(["a", "--plot"])
    for name, (_, (width, height)) in plots.FIGURES.items():
        with Image.open(two_runs[0] / "plots" / name) as png:
            assert png.size == (100 * width, 100 * height) and len(png.getcolors(1 << 16)) > 20  # drawn, not blank
    fig = plt.figure()
    assert plots.draw_losses(two_runs[0], fig)
    metrics = read_jsonl(two_runs[0] / "metrics.jsonl")
    losses = fig.axes[0]
    raw = [list(line.get_ydata()) for line in losses.lines if line.get_label().startswith("_")]
    smoothed = {
        line.get_label(): list(line.get_ydata()) for line in losses.lines if not line.get_label().startswith("_")
    }
    width = max(1, round(plots.SMOOTHING * len(metrics)))
    expected = [
        statistics.median(r["loss"] for r in metrics[max(0, i - width + 1) : i + 1]) for i in range(len(metrics))
    ]
    assert [r["loss"] for r in metrics] in raw and smoothed["loss"] == pytest.approx(expected)
    assert [r["back_rec"] for r in metrics] in raw and set(smoothed) == set(plots.LOSSES)
    plt.close(fig)


def test_missing_run_lists_the_runs_that_exist(two_runs, capsys):
    with pytest.raises(SystemExit):
        report(["run_42"])
    err = capsys.readouterr().err
    assert "no run folder 'run_42'" in err and "a, b" in err and err.count("\n") == 1


def test_run_names_that_mix_numbers_and_words_list_in_natural_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("exp_10", "exp_final", "exp_2", "run_1"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / records.CONFIG).write_text("{}")
    with pytest.raises(SystemExit):
        report(["typo"])
    err = capsys.readouterr().err
    assert "runs under runs/: exp_2, exp_10, exp_final, run_1" in err and err.count("\n") == 1, err


def test_py_spy_and_torch_profiler_captures(image_folder, in_tmp, capsys):
    folder = tiny_run(image_folder, "cap", "--steps", "12", "--py-spy", "2:5", "--torch-profile", "6:8")
    err = capsys.readouterr().err
    if "ptrace not permitted" in err:
        pytest.skip("this machine forbids ptrace; the one-line fix was printed")
    speedscope = json.loads((folder / "pyspy.speedscope.json").read_text())
    assert speedscope["profiles"] and any(p.get("samples") for p in speedscope["profiles"])
    assert (folder / "pyspy.svg").read_text().startswith("<?xml")
    trace = json.loads((folder / "torch_trace.json").read_text())
    assert trace["traceEvents"]
    top = json.loads((folder / "torch_profile.json").read_text())["top"]
    assert top and any("conv" in row["name"] for row in top)
    # Steps a capture ran in (its start and stop included) are marked and left out of the statistics.
    captured = [r["step"] for r in read_jsonl(folder / "phases.jsonl") if r.get("captured")]
    assert captured == [2, 3, 4, 5, 6, 7, 8]
    assert analyse(folder)["throughput"]["captured_steps"] == 7
    report(["cap"])
    out = " ".join(capsys.readouterr().out.split())  # undo rich's line wrapping
    assert "torch.profiler: top ops" in out and "7 steps under a profiler capture" in out
    counted = json.loads((folder / "torch_profile.json").read_text())["kernels_per_step"]["mean"]
    assert f"torch.profiler counted {counted:,.0f} aten ops per step; the census estimates" in out


def test_loss_summary_leaves_out_overflow_steps_without_a_grad_norm():
    records = [
        {
            "step": i,
            "loss": 10.0 - i,
            "forw_fit": 1.0,
            "forw_ce": 1.0,
            "back_rec": 8.0 - i,
            "grad_norm": None if i < 2 else float(i),
        }
        for i in range(6)
    ]
    summary = loss_summary(records)
    assert summary["grad_norm"] == {"first": 2.0, "last": 5.0, "min": 2.0} and summary["loss"]["first"] == 10.0


def recorded_gpu_run(folder, steps=30, step_ms=40.0, validation_ms=100.0, census_extra=(), **overrides):
    """A run folder as an H100 run of the x4 recipe in bf16 would leave it: records written by hand."""
    from profiling import records

    folder.mkdir(parents=True)
    cfg = {**config.load("irn_x4")[0], "config": "irn_x4", "precision": "bf16", "steps": 100, **overrides}
    records.write_json(folder / "config.json", cfg)
    env = {"device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}, "world_size": 1}
    env |= {"probe": {"launch_us": 4.0, "matmul_tflops": 700.0}, "backends": {"conv_tf32": True}}
    census = {"flops_per_step": 2.32e12, "bytes_per_step": 73e9, "kernels_per_step": 6000, "ops_per_step": 4469}
    records.write_json(folder / "census.json", census | {"categories": {}, "setting": {}} | dict(census_extra))
    with records.JsonLines(folder / "env.jsonl") as out:
        out.write(env)
    with records.JsonLines(folder / "phases.jsonl") as phases, records.JsonLines(folder / "metrics.jsonl") as metrics:
        for step in range(1, steps + 1):
            validation = validation_ms if step % 10 == 0 else 0.0
            parts = {"data": 1.0, "h2d": 1.0, "forward": 12.0, "loss": 1.0, "backward": 22.0, "optimizer": 2.0}
            parts |= {"logging": 0.5, "other": 0.5, "validation": validation}
            phases.write({"step": step, "wall_ms": step_ms + validation, **parts})
            metrics.write(
                {"step": step, "loss": 100.0 - step, "forw_fit": 1.0, "forw_ce": 1.0, "back_rec": 98.0 - step}
            )
    with records.JsonLines(folder / "gpu.jsonl") as samples:
        for t in range(20):
            samples.write({"t": t / 10, "gpu": 0, "util": 97, "mem_used_mib": 30000, "power_w": 600.0})
    return folder


def test_a_recorded_gpu_run_gets_its_mfu_floors_and_bound(in_tmp, capsys):
    run = analyse(recorded_gpu_run(Path("runs/h100")))
    assert run["phases"]["step_ms"] == pytest.approx(40.0)  # validation is scheduled work, not the step
    own = run["hardware"]["own"]
    assert own["peak_tflops"] == 989.4 and own["math"] == "bf16"
    assert own["mfu"] == pytest.approx(2.32e12 / 0.040 / 1e12 / 989.4)
    assert own["launch_ms"] == pytest.approx(6000 * 4.0 / 1e3) and own["bound"] == "launch"
    assert run["verdict"]["label"] == "launch-bound" and "about 6,000 kernels per step" in run["verdict"]["evidence"]
    assert "reduce-overhead" in run["verdict"]["next"]
    validation = run["scheduled"]["validation"]
    assert validation["count"] == 3 and validation["share"] == pytest.approx(300 / (30 * 40 + 300))
    assert "--val-every" in validation["hint"]
    report(["h100"])
    out = " ".join(capsys.readouterr().out.split())
    assert "MFU 5.9%" in out and "time to step 100:" in out and "validation: 3 times" in out
    assert "H100 SXM5" in out and "A100 SXM4" in out  # the forecast table


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])  # both capture CUDA graphs in inductor
def test_cuda_graphs_have_no_launch_floor_and_are_not_advised_again(in_tmp, mode):
    run = analyse(recorded_gpu_run(Path("runs/graphs"), compile=mode, census_extra={"compile": mode}))
    own = run["hardware"]["own"]
    assert own["cuda_graphs"] and own["launch_ms"] == 0.0 and own["bound"] != "launch"
    assert all(gpu["launch_ms"] == 0.0 for gpu in run["hardware"]["forecasts"].values())
    hw = run["hardware"]
    assert "no launch floor" in render.forecast_table(hw["forecasts"], "bf16", 16, hw["forecast_launch_us"]).title
    assert "reduce-overhead" not in run["verdict"]["next"]
    counted = render.hardware_lines(run)[0]
    assert "(eager ops: compilation fuses some" in counted  # the census counted what eager would launch


def test_mfu_counts_the_model_s_flops_when_backprop_by_inversion_recomputes(in_tmp):
    """Recomputation raises the step's FLOPs and its compute floor, not its MFU."""
    extra = {"flops_per_step": 3.1e12, "model_flops_per_step": 2.32e12}
    own = analyse(recorded_gpu_run(Path("runs/inv"), invertible_backprop=True, census_extra=extra))["hardware"]["own"]
    assert own["mfu"] == pytest.approx(2.32e12 / 0.040 / 1e12 / 989.4)
    assert own["compute_ms"] == pytest.approx(3.1e12 / 989.4e12 * 1e3)


def test_a_finished_run_says_so_instead_of_a_time_to_go(two_runs, capsys):
    report(["a"])
    out = " ".join(capsys.readouterr().out.split())
    assert "finished 14 steps in" in out and "time to step" not in out


def test_the_phase_plot_keeps_slow_steps_from_flattening_the_rest(in_tmp):
    import matplotlib.pyplot as plt

    from profiling.report import plots

    folder = recorded_gpu_run(Path("runs/h100"))
    with open(folder / "phases.jsonl", "a") as f:
        f.write(json.dumps({"step": 30, "wall_ms": 4000.0, "forward": 3960.0, "other": 40.0}) + "\n")
    fig = plt.figure()
    assert plots.draw_phases(folder, fig)
    forward = next(ax for ax in fig.axes if ax.get_title().startswith("forward"))
    assert forward.get_ylim()[1] == pytest.approx(3 * 12.0)  # 3 x the p95 of forward's 12 ms, not the 4 s one
    assert any(text.get_text() == "3960 ms" for text in forward.texts)
    plt.close(fig)


def test_each_job_s_warm_up_is_left_out_of_the_steady_state():
    """A resumed job allocates, autotunes and compiles again: its first steps are warm-up too."""
    steps = [{"step": s, "wall_ms": 1000.0 if (s - 1) % 15 < 5 else 10.0} for s in range(1, 31)]  # from step 1
    assert [r["step"] for r in steady(steps, job_starts=[0, 15])] == [*range(6, 16), *range(21, 31)]
    assert [r["step"] for r in steady(steps)] == list(range(6, 31))
    assert steady(steps[:8]) == steps[5:8]  # the warm-up goes even when little is left (the verdict: too short)


def test_the_time_to_go_counts_the_scheduled_work_to_come():
    """10 ms steps and a 500 ms validation every 10 steps: 60 ms a step on average, not 10."""
    logged = [{"step": s, "wall_ms": 10.0 + (500.0 if s % 10 == 0 else 0.0)} for s in range(1, 21)]
    for r in logged:
        if r["step"] % 10 == 0:
            r["validation"] = 500.0
    done = progress({"steps": 120}, [{"step": 20}], logged, step_seconds=0.010)
    assert done["remaining_s"] == pytest.approx(100 * 0.060)


def test_the_gpu_counters_are_those_of_the_steady_training_steps():
    """Samples during compilation and warm-up (the first steps) or during a step's validation are not the
    training step's: a GPU idle while it compiled must not read as a host-bound step."""
    steps = [{"step": s, "wall_ms": 100.0, "clock": 10.0 + 0.1 * s} for s in range(1, 21)]  # step s ends at 10 + s/10
    steps[12]["validation"] = 60.0  # in step 13
    samples = [{"t": 0, "clock": 10.05, "gpu": 0, "util": 0, "mem_used_mib": 1}]  # step 1: compiling
    during = [{"t": 0, "clock": 9.95 + 0.1 * s, "gpu": 0, "util": 97, "mem_used_mib": 1} for s in range(6, 21)]
    samples += during  # in steps 6 to 20
    samples[1 + 13 - 6] |= {"util": 3, "mem_used_mib": 5}  # the validation in step 13, on a whole image
    kept = during_steady_steps(samples, steady(steps))
    assert [s["util"] for s in kept] == [97] * 14
    assert gpu_stats(kept, 100.0)["util_mean"] == 97 and gpu_stats(samples, 100.0)["util_mean"] < 97
    run = training_gpu_stats({0: samples}, {0: steady(steps)}, 100.0, gpus=1)
    assert run["util_mean"] == 97 and run["mem_peak_mib"] == 5  # the memory peak is the run's, validation too
    old = [{k: v for k, v in s.items() if k != "clock"} for s in samples]  # a run recorded without clocks
    assert during_steady_steps(old, steady(steps)) == old


def test_energy_per_step_counts_every_rank_s_gpu():
    sample = {"gpu": 0, "util": 90, "mem_used_mib": 1, "power_w": 300.0}
    assert gpu_stats([sample], 100.0, gpus=4)["energy_per_step_j"] == pytest.approx(4 * 300.0 * 0.1)


def test_only_the_reasons_that_slow_the_gpu_count_as_throttling():
    """NVML's clock-event bits: idle (0x1), application clocks (0x2), sync boost (0x10) and display clocks (0x100)
    do not slow a GPU down; the power cap (0x4), slowdowns (0x8, 0x20, 0x40) and the power brake (0x80) do."""
    reasons = [0x1, 0x2, 0x10, 0x100, 0x1 | 0x2 | 0x10, 0x4, 0x8, 0x20, 0x40, 0x80 | 0x1]
    samples = [{"gpu": 0, "util": 90, "mem_used_mib": 1, "throttle": r} for r in reasons]
    assert gpu_stats(samples, 100.0)["throttled_share"] == pytest.approx(5 / 10)


def test_the_header_says_how_the_dense_blocks_ran(in_tmp):
    """env.jsonl's dense-kernel choices (engine/model/dense_choice.py), per shape with their times, those of a
    coupling's H and G together said so."""
    folder = recorded_gpu_run(Path("runs/chosen"))
    (env,) = read_jsonl(folder / "env.jsonl")
    choices = [
        {
            "shape": [16, 3, 72, 72],
            "dtype": "bfloat16",
            "fused_ms": 1.5,
            "cudnn_ms": 2.25,
            "chosen": "fused",
            "subnets": 2,
        },  # fmt: skip
        {"shape": [16, 45, 36, 36], "dtype": "bfloat16", "fused_ms": 3.0, "cudnn_ms": 2.0, "chosen": "cudnn"},
    ]
    (folder / "env.jsonl").write_text(json.dumps(env | {"dense_kernels": {"mode": "auto", "choices": choices}}) + "\n")
    header = render.header(analyse(folder)).renderable
    assert (
        "dense blocks (auto): 16x3x72x72 bfloat16: fused (H and G: fused 1.50 ms, cuDNN 2.25 ms); "
        "16x45x36x36 bfloat16: cudnn (fused 3.00 ms, cuDNN 2.00 ms)"
    ) in header


def test_a_forecast_in_the_run_folder_adds_the_issue_floor_to_a_fused_step(in_tmp):
    """forecast.json (profiling.bench forecast --run): its bf16 steps give the A100 and H100 rows, and the
    run's own H100, an issue floor that, being the largest, bounds them; the other GPUs have none."""
    folder = recorded_gpu_run(Path("runs/forecast"), census_extra={"setting": {"fast_kernels": True}})
    steps = [{"gpu": gpu, "precision": p, "issue_ms": ms} for gpu, p, ms in
             [("A100", "bf16", 900.0), ("H100", "bf16", 500.0), ("H100", "tf32", 1.0)]]  # fmt: skip
    (folder / "forecast.json").write_text(json.dumps({"steps": steps, "launches": []}))
    hw = analyse(folder)["hardware"]
    assert (hw["own"]["issue_ms"], hw["own"]["bound"], hw["own"]["floor_ms"]) == (500.0, "issue", 500.0)
    rows = hw["forecasts"]
    assert (rows["A100"]["issue_ms"], rows["A100"]["bound"]) == (900.0, "issue")
    assert "issue_ms" not in rows["V100"] and rows["V100"]["bound"] != "issue"
    assert "issue ms" in [c.header for c in render.forecast_table(rows, "bf16", 16, 4.0).columns]


def test_a_run_too_short_for_steady_steps_shows_no_steady_figures(in_tmp, capsys):
    """4 steps are all warm-up: no steady-state table, no throughput, MFU or floors, each said so."""
    recorded_gpu_run(Path("runs/short"), steps=4)
    report(["short"])
    out = " ".join(capsys.readouterr().out.split())
    assert "by phase (every step, warm-up included: too few steady steps)" in out and "steady state" not in out
    assert "throughput: not measured, 0 steady steps of the 5 it needs" in out and "it/s" not in out
    assert "MFU and floors: not judged, no job of the run has 5 steady steps" in out and "MFU 5" not in out
    assert "too short to judge" in out


def second_job(folder, start_step, env_changes, slower_ms=0.0):
    """Another job of a recorded run: from step start_step + 1 on, its own environment line, and steps slower by
    `slower_ms` (in the backward)."""
    (env,) = read_jsonl(folder / "env.jsonl")
    with open(folder / "env.jsonl", "a") as out:
        out.write(json.dumps(env | {"start_step": start_step} | env_changes) + "\n")
    steps = read_jsonl(folder / "phases.jsonl")
    for r in steps[start_step:]:
        r["wall_ms"] += slower_ms
        r["backward"] += slower_ms
    (folder / "phases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))


def test_each_job_is_judged_against_its_own_probe(in_tmp):
    """Job 1: 40 ms steps, launches probed at 4 us (6,000 x 4 us = a 24 ms launch floor); job 2, from step 16, on a
    slower host: 80 ms steps, 10 us launches (a 60 ms floor). Pooled against the last probe, the step would be 60 ms
    at 1.0x; each job on its own is 40 / 24 and 80 / 60 of its floor, and the verdict takes the latest job's."""
    folder = recorded_gpu_run(Path("runs/jobs"))
    second_job(folder, 15, {"probe": {"launch_us": 10.0, "matmul_tflops": 700.0}}, slower_ms=40.0)
    run = analyse(folder)
    judged = [(job["job"], job["hardware"]["step_ms"], job["hardware"]["vs_floor"]) for job in run["by_job"]]
    assert judged == [
        (1, pytest.approx(40.0), pytest.approx(40 / 24)),
        (2, pytest.approx(80.0), pytest.approx(80 / 60)),
    ]
    assert run["verdict"]["label"] == "launch-bound"
    assert "the step takes 80.0 ms, 1.3x its launch floor of 60.0 ms" in run["verdict"]["evidence"]
    lines = render.hardware_lines(run)
    assert any(line.startswith("  job 2 (from step 16, 10 steady steps): 80.0 ms a step, 1.3x") for line in lines)


def cpu_run(folder, cpu_percent):
    """A recorded CPU run whose process samples, one per 100 ms step, show `cpu_percent(step)`, none waiting."""
    from profiling import records

    folder.mkdir(parents=True)
    records.write_json(folder / "config.json", {**config.load("demo")[0], "config": "demo", "steps": 30})
    (folder / "env.jsonl").write_text(json.dumps({"device": {"type": "cpu", "name": "x86_64"}, "world_size": 1}) + "\n")
    with records.JsonLines(folder / "phases.jsonl") as phases, records.JsonLines(folder / "gpu.jsonl") as samples:
        for step in range(1, 31):
            clock = 1000.0 + step / 10
            phases.write({"step": step, "wall_ms": 100.0, "clock": clock, "forward": 40.0, "backward": 60.0})
            samples.write({"t": step / 10, "clock": clock - 0.05, "cpu_percent": cpu_percent(step),
                           "waiting_percent": 0.0, "rss_mib": 100.0})  # fmt: skip
    return folder


def test_a_job_on_far_less_cpu_than_an_earlier_one_is_named_cpu_starved(in_tmp):
    folder = cpu_run(Path("runs/shared"), lambda step: 190.0 if step <= 15 else 60.0)
    second_job(folder, 15, {})
    verdict = analyse(folder)["verdict"]
    assert verdict["label"] == "CPU-starved"
    assert "job 2 ran on 60% of a core (100% = one core) where job 1 of the same run had 190%" in verdict["evidence"]
    even = cpu_run(Path("runs/even"), lambda step: 190.0 if step <= 15 else 150.0)
    second_job(even, 15, {})
    assert analyse(even)["verdict"]["label"] != "CPU-starved"


def test_the_straggler_is_set_against_the_median_rank():
    """Two ranks: the median is their mean, so the slow rank is 40 / 25 = 1.6x it (not 1.0x itself)."""
    from profiling.report.verdict import straggler

    ranks = [{"rank": 0, "work_ms": 10.0, "straggler": False}, {"rank": 1, "work_ms": 40.0, "straggler": True}]
    assert "40.0 ms, 1.6x the median rank's 25.0 ms" in straggler(ranks=ranks)["evidence"]


def test_the_report_shows_what_compiling_cost(in_tmp, capsys):
    folder = recorded_gpu_run(Path("runs/compiled"))
    steps = read_jsonl(folder / "phases.jsonl")
    steps[0]["compile_ms"] = 12500.0
    (folder / "phases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    report(["compiled"])
    assert "torch.compile: 12.5 s tracing and compiling the first step" in capsys.readouterr().out


def test_the_report_finds_runs_under_runs_dir_and_keeps_its_tables_whole(in_tmp, capsys, monkeypatch):
    """--runs-dir (or $IRNSCOPE_RUNS) names the runs folder; off a terminal a table is 200 columns wide, so the
    forecast table (wider than 80) keeps every cell whole."""
    recorded_gpu_run(in_tmp / "kept" / "h100")
    report(["h100", "--runs-dir", str(in_tmp / "kept")])
    monkeypatch.setenv(RUNS_VARIABLE, str(in_tmp / "kept"))
    report(["h100", "--compare", "h100"])
    out = capsys.readouterr().out
    assert out.count(f"run {in_tmp / 'kept' / 'h100'}") == 2 and "ratio = " in out
    table = [line for line in out.splitlines() if line.startswith("│")]
    assert any("│ Tesla P100 PCIe 16 GB │" in line for line in table) and "…" not in out
    assert 80 < max(map(len, table)) <= 200


def test_the_explosion_list_says_when_it_shows_only_the_last(in_tmp):
    events = [
        {"step": s, "kind": "non-finite" if s == 2 else "loss > 10x running median", "losses": {"loss": 1.0},
         "grad_norm": 5.0, "images": ["a.png"], "batch_file": f"explosions/step_{s:08d}.pt"}
        for s in range(1, 9)
    ]  # fmt: skip
    lines = render.explosion_lines({"explosions": events, "run": "runs/x"})
    assert lines[0] == "gradient explosions: 8 recorded (1 non-finite and skipped); the last 5 of them:"
    assert [line.split(":")[0] for line in lines[1:6]] == [f"  step {s}" for s in range(4, 9)]
    assert lines[-1] == "  which samples: python -m engine.replay runs/x [--step N]"
    assert "the last" not in render.explosion_lines({"explosions": events[:5], "run": "runs/x"})[0]


def trained_records(folder, steps=30, validated=(10, 20, 30), exploded=(7, 23)):
    """A recorded run's metrics with a learning rate halved at step 15, grad norms and validations, and explosions."""
    from profiling import records

    metrics = [
        {"step": s, "loss": 100.0 - s, "forw_fit": 1.0, "forw_ce": 1.0, "back_rec": 98.0 - s,
         "lr": 2e-4 if s < 15 else 1e-4, "grad_norm": 1000.0 + s}
        | ({"val_psnr_y": 20.0 + s / 10} if s in validated else {})
        for s in range(1, steps + 1)
    ]  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    with records.JsonLines(folder / "explosions.jsonl") as out:
        for s in exploded:
            out.write({"step": s, "kind": "spike", "losses": {}, "grad_norm": 1.0, "images": [], "batch_file": None})
    return metrics


def test_the_loss_figure_draws_validation_lr_grad_norm_the_clip_and_the_explosions(in_tmp):
    import matplotlib.pyplot as plt

    from profiling.report import plots

    folder = recorded_gpu_run(Path("runs/plotted"))
    metrics = trained_records(folder)
    fig = plt.figure()
    assert plots.draw_losses(folder, fig)
    losses, validation, optimiser, grad = fig.axes
    scored = [r for r in metrics if "val_psnr_y" in r]
    (line,) = validation.lines
    assert list(line.get_xdata()) == [10, 20, 30] and list(line.get_ydata()) == [r["val_psnr_y"] for r in scored]
    (lr,) = optimiser.lines
    assert list(lr.get_ydata()) == [r["lr"] for r in metrics] and optimiser.get_ylim()[0] == 0
    norm, clip, *grad_marks = grad.lines
    assert list(norm.get_ydata()) == [r["grad_norm"] for r in metrics] and list(clip.get_ydata()) == [10.0, 10.0]
    for ax, marks in ((losses, losses.lines[len(plots.LOSSES) * 2 :]), (grad, grad_marks)):  # after each loss's two
        assert [list(line.get_xdata()) for line in marks] == [[7, 7], [23, 23]], ax
    assert "red: 2 recorded explosions" in losses.get_title()
    plt.close(fig)


def test_the_phase_figure_gives_the_report_s_shares_of_the_steady_steps(in_tmp):
    """A slow first step (warm-up: 4 s of forward) moves every share if counted; the panels' shares are those of
    the steady steps, the report's: forward 12 of a 40 ms step."""
    import matplotlib.pyplot as plt

    from profiling.report import plots

    folder = recorded_gpu_run(Path("runs/warm"))
    steps = read_jsonl(folder / "phases.jsonl")
    steps[0] |= {"wall_ms": 4000.0, "forward": 3972.0}
    (folder / "phases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    fig = plt.figure()
    assert plots.draw_phases(folder, fig)
    titles = {ax.get_title().split(":")[0]: ax.get_title() for ax in fig.axes}
    assert titles["forward"] == "forward: 30.0% of the steady step" and titles["backward"].startswith("backward: 55.0%")
    plt.close(fig)


def test_the_utilisation_figure_marks_validations_and_checkpoints_and_memory_from_zero(in_tmp):
    """Samples 1,000 s behind their clock; step 10 validates for 100 ms then logs for 0.5 ms, step 20 checkpoints for
    200 ms: each shaded where it ran, in the samples' seconds."""
    import matplotlib.pyplot as plt

    from profiling import records
    from profiling.report import plots

    folder = Path("runs/marked")
    folder.mkdir(parents=True)
    with records.JsonLines(folder / "phases.jsonl") as phases, records.JsonLines(folder / "gpu.jsonl") as samples:
        for step in range(1, 31):
            clock = 1000.0 + step
            work = {10: {"validation": 100.0, "logging": 0.5}, 20: {"checkpoint": 200.0}}.get(step, {})
            phases.write({"step": step, "wall_ms": 1000.0, "clock": clock, **work})
            samples.write({"t": clock - 1000.0 + 0.5, "clock": clock + 0.5, "cpu_percent": 100.0, "rss_mib": 512.0})
    fig = plt.figure()
    assert plots.draw_utilisation(folder, fig)
    busy, memory = fig.axes
    for ax in (busy, memory):
        spans = sorted((p.get_x(), p.get_x() + p.get_width(), p.get_label()) for p in ax.patches)
        expected = [(10 - 0.0005 - 0.1, 10 - 0.0005, "validation"), (20 - 0.2, 20.0, "checkpoint")]
        assert [label for *_, label in spans] == ["validation", "checkpoint"]
        assert [s[:2] for s in spans] == [pytest.approx(e[:2]) for e in expected]
    assert memory.get_ylim()[0] == 0
    plt.close(fig)
