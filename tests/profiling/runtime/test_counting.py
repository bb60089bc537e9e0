"""The step census: counted on fake tensors, checked against a real step on the CPU and against hand counts."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from engine.data import crops
from engine.training import config
from engine.training.explosion_guard import ExplosionGuard
from engine.training.step import Trainer
from engine.training.step_census import census, census_json
from profiling import census as census_cli
from profiling import records
from profiling.report import roofline
from profiling.runtime.counting import StepCounter
from profiling.runtime.timer import PhaseTimer


def small(scale, *extra):
    crop = 4 * scale
    argv = ["--config", f"irn_x{scale}", "--blocks-per-stage", "1", "--growth", "8", "--batch-size", "2"]
    cfg, _ = config.resolve([*argv, "--crop", str(crop), *extra])
    return cfg


def real_step_flops(cfg, tmp_path):
    """FLOPs of one real training step on the CPU, as torch's FlopCounterMode counts them."""
    torch.manual_seed(0)
    trainer = Trainer(cfg, torch.device("cpu"))
    batch = crops.random_batch(cfg.batch_size, cfg.crop, cfg.scale)
    guard = ExplosionGuard(tmp_path, 10.0, 200, 5, ["x"], clip=10.0)
    with FlopCounterMode(display=False) as flops:
        trainer.step(batch, PhaseTimer("cpu", enabled=False), guard, 0)
    return flops.get_total_flops()


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_census_flops_equal_a_flop_counter_on_the_real_step(scale, tmp_path):
    cfg = small(scale)
    counted = census(cfg)
    assert counted.flops_per_step == real_step_flops(cfg, tmp_path) > 0
    assert counted.flops_per_step == sum(c["flops"] for c in counted.categories.values())


def dense_pass_flops(scale=4, crop=144, blocks=8, growth=32):
    """One pass through the network, counted by hand: 2 FLOPs per multiply-add of every 3x3 conv."""
    total, channels, side = 0, 3, crop
    for _ in range(scale.bit_length() - 1):
        channels, side = channels * 4, side // 2
        for c_in, c_out in ((channels - 3, 3), (3, channels - 3), (3, channels - 3)):  # F, G, H
            ins = [c_in + k * growth for k in range(5)]
            outs = [growth] * 4 + [c_out]
            total += blocks * side * side * 2 * 9 * sum(i * o for i, o in zip(ins, outs, strict=True))
    return total


def test_the_x4_recipe_step_is_the_hand_counted_cost():
    """One pass at x4 is 24.2 GFLOP per 144x144 image; a training step makes two passes (HR -> LR, z and
    back) and their backward (input and weight gradients: twice a pass): six passes."""
    assert round(dense_pass_flops() / 1e9, 1) == 24.2
    cfg, _ = config.resolve(["--config", "irn_x4", "--batch-size", "1"])
    counted = census(cfg)
    # ... but the first block's F sees only the Haar bands of the data: its first conv needs no input gradient
    first_input_gradient = 72 * 72 * 2 * 9 * 9 * 32
    assert counted.categories["conv"]["flops"] == 6 * dense_pass_flops() - first_input_gradient
    assert counted.flops_per_step - counted.categories["conv"]["flops"] < 1e-3 * counted.flops_per_step


def test_the_fused_path_does_the_same_arithmetic_with_fewer_kernels_and_bytes():
    # at a batch that outweighs the dense blocks' weight packing, which moves as much whatever the batch
    cfg = small(4, "--batch-size", "8", "--crop", "32")
    reference, fused = census(cfg), census(cfg, fast_kernels=True)
    assert fused.flops_per_step == reference.flops_per_step
    assert fused.kernels_per_step < reference.kernels_per_step and fused.bytes_per_step < reference.bytes_per_step
    # what concatenation is left joins a coupling's two halves: the dense blocks' own are gone
    assert fused.categories["concatenation"]["bytes"] < 0.1 * reference.categories["concatenation"]["bytes"]
    assert fused.categories["dense block (fused)"]["flops"] == reference.categories["conv"]["flops"]
    # before compute capability 8.0 the dense blocks stay on cuDNN: Haar and coupling alone are fused
    partly = census(cfg, fast_kernels=True, fused_dense=False)
    assert "dense block (fused)" not in partly.categories and partly.categories["conv"] == reference.categories["conv"]
    assert fused.kernels_per_step < partly.kernels_per_step < reference.kernels_per_step


@pytest.mark.parametrize("fused_dense", [True, False])  # the run's own GPU from 8.0 on, or before it
def test_forecasts_count_what_each_gpu_would_run(fused_dense):
    """A fused run's census carries the step with the dense blocks on cuDNN too: P100 and V100 rows count
    that one, A100 and H100 rows the fused one, whichever GPU the run itself had."""
    counted = census_json(small(4), fast_kernels=True, fused_dense=fused_dense)
    split = counted["by_capability"]
    fused, partly = census(small(4), fast_kernels=True), census(small(4), fast_kernels=True, fused_dense=False)
    assert split["from"]["kernels_per_step"] == fused.kernels_per_step
    assert split["before"]["kernels_per_step"] == partly.kernels_per_step
    assert counted["kernels_per_step"] == (fused if fused_dense else partly).kernels_per_step
    rows = roofline.forecasts(counted, launch_us=1.0)
    assert rows["P100"]["launch_ms"] == rows["V100"]["launch_ms"] == partly.kernels_per_step / 1e3
    assert rows["A100"]["launch_ms"] == rows["H100"]["launch_ms"] == fused.kernels_per_step / 1e3
    assert "by_capability" not in census_json(small(4))  # the reference step is the same everywhere


def test_bf16_moves_fewer_bytes_and_counts_autocast_s_casts():
    fp32, bf16 = census(small(4)), census(small(4, "--precision", "bf16"))
    assert bf16.flops_per_step == fp32.flops_per_step
    assert bf16.bytes_per_step < fp32.bytes_per_step and bf16.ops_per_step > fp32.ops_per_step


def test_kernel_and_byte_counts_of_known_ops():
    counter = StepCounter()
    with FakeTensorMode():
        x = torch.empty(2, 4, 8, 8)
        weight, bias = torch.empty(6, 4, 3, 3, requires_grad=True), torch.empty(6, requires_grad=True)
        with counter.counting():
            with counter.phase("forward"):
                y = F.conv2d(x, weight, bias, padding=1)
                z = torch.cat([y, y], 1)[:, :6]  # the slice is a view: no kernel, no bytes
            with counter.phase("backward"):
                z.sum().backward()
    conv, concat = counter.by_category["conv"], counter.by_category["concatenation"]
    # forward: a convolution with bias is 2 kernels; backward: weight and bias gradients (x needs none)
    assert conv.kernels == 2 + 2 and conv.flops == 2 * 2 * 64 * 6 * 4 * 9 * 2  # forward + weight gradient
    assert concat.kernels == 1 and concat.bytes == 2 * (2 * 6 * 64 * 4) + 2 * 12 * 64 * 4


def test_the_census_command_prints_json_with_the_totals_and_forecasts(capsys):
    census_cli.main(["--config", "irn_x2", "--blocks-per-stage", "1", "--batch-size", "1", "--crop", "16", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["flops_per_step"] > 0 and out["kernels_per_step"] > 0 and out["bytes_per_step"] > 0
    assert set(out["forecasts"]) == set(roofline.GPUS)


def test_the_census_of_a_run_is_that_of_its_config(in_tmp, capsys):
    tiny = ["--blocks-per-stage", "1", "--batch-size", "1", "--crop", "16", "--json"]
    census_cli.main(["--config", "irn_x2", *tiny])
    expected = json.loads(capsys.readouterr().out)
    cfg, _ = config.resolve(["--config", "irn_x2", *tiny[:-1]])
    Path("runs/r").mkdir(parents=True)
    records.write_json(Path("runs/r") / records.CONFIG, cfg.to_json())
    census_cli.main(["--resume", "r", "--json"])
    assert json.loads(capsys.readouterr().out) == expected
    with records.JsonLines(Path("runs/r") / records.ENV) as env:
        env.write({"world_size": 2})  # two ranks: half the batch each
    records.write_json(Path("runs/r") / records.CONFIG, replace(cfg, batch_size=2).to_json())
    census_cli.main(["--resume", "r", "--growth", "16", "--json"])  # a what-if: nothing is loaded
    counted = json.loads(capsys.readouterr().out)
    assert counted["setting"]["batch_size"] == 1 and counted["setting"]["growth"] == 16
    with pytest.raises(SystemExit):
        census_cli.main(["--config", "irn_x2", "--name", "x"])
    assert "--name names a new training run" in capsys.readouterr().err


def test_floors_on_named_gpus():
    c = {"flops_per_step": 2.32e12, "bytes_per_step": 73e9, "kernels_per_step": 6000}
    h100 = roofline.floors(c, roofline.GPUS["H100"], "bf16")
    assert h100["compute_ms"] == pytest.approx(2.345, abs=0.01)  # 2.32 TFLOP at 989 TFLOP/s
    assert h100["memory_ms"] == pytest.approx(73e9 / 3350e9 * 1e3) and h100["bound"] == "launch"
    assert roofline.floors(c, roofline.GPUS["P100"], "bf16")["math"] == "fp32"  # no bf16 before sm_80
    assert roofline.floors(c, roofline.GPUS["A100"], "fp32")["math"] == "tf32"
    assert roofline.floors(c, roofline.GPUS["A100"], "fp32", tf32=False)["math"] == "fp32"
    h200 = roofline.named_gpu("NVIDIA H200")  # a run's own GPU: H100's arithmetic, more bandwidth
    assert h200.peak_tflops == roofline.GPUS["H100"].peak_tflops and h200.bandwidth_gbs == 4800
