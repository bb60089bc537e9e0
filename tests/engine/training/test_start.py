"""What a run says and records as it starts (engine/training/start.py): the start-up summary, kept in train.log
with everything else the console printed, and the dense kernels' choice per shape, in env.jsonl."""

import numpy as np
import pytest
import torch
from PIL import Image

from engine import train
from engine.model import dense_choice, execution
from engine.training import config, start
from engine.training.step import Trainer
from profiling import records
from tests.conftest import TINY, smooth_image


def test_the_trainer_chooses_the_dense_kernels_per_shape_and_env_jsonl_records_it(monkeypatch, tmp_path):
    """With fused kernels available (here: said to be) the trainer times each dense-block shape of its step
    both ways (a stand-in timer: fused is faster on 3 input channels) and env.jsonl holds the times and
    choices that the blocks run with."""
    monkeypatch.setattr(execution, "fast_kernels_unavailable", lambda device: None)
    monkeypatch.setattr(execution, "dense_kernels_unavailable", lambda device: None)
    timed = []

    def stand_in(name, blocks, x):
        timed.append((name, tuple(x.shape)))
        return {"cudnn": 2.0, "fused": 1.0 if blocks[0].conv1.in_channels == 3 else 3.0}[name]

    monkeypatch.setattr(dense_choice, "time_block", stand_in)
    cfg, _ = config.resolve([*TINY, "--fast-kernels"])
    trainer = Trainer(cfg, torch.device("cpu"))
    assert sorted(timed) == sorted({(name, shape) for name, shape in timed}) and len(timed) == 4  # 2 shapes x 2
    start.write_start_records(trainer, tmp_path, None, data=None)
    (env,) = records.read_envs(tmp_path)
    recorded = env["dense_kernels"]
    assert recorded["mode"] == "auto"
    assert sorted((c["shape"][1], c["chosen"], c["fused_ms"], c["cudnn_ms"]) for c in recorded["choices"]) == [
        (3, "fused", 1.0, 2.0),
        (9, "cudnn", 3.0, 2.0),
    ]
    ops = {block.conv1.in_channels: block.fast_op for block in trainer.model.modules() if hasattr(block, "conv5")}
    assert ops == {3: dense_choice.dense_block_op("fused"), 9: dense_choice.dense_block_op("cudnn")}


def dense_block_parameters(c_in, c_out, growth):
    """IRN's dense block counted by hand: five 3x3 convs with biases, conv k seeing c_in + k * growth channels."""

    def conv(inputs, outputs):
        return inputs * outputs * 9 + outputs

    return sum(conv(c_in + k * growth, growth) for k in range(4)) + conv(c_in + 4 * growth, c_out)


def test_the_start_up_summary_says_what_trains_on_what_and_train_log_keeps_all_the_console_said(in_tmp, capsys):
    folder = in_tmp / "hr"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(smooth_image(rng, 40, 48)).save(folder / f"img{i}.png")
    Image.fromarray(smooth_image(rng, 40, 48)[..., 0]).save(folder / "gray.png")
    (folder / "cut.png").write_bytes((folder / "img0.png").read_bytes()[:100])
    train.main(
        [*TINY, "--data", str(folder), "--val", str(folder), "--val-max-images", "2", "--steps", "1", "--name", "s"]
    )
    said = capsys.readouterr()
    parameters = dense_block_parameters(9, 3, 4) + 2 * dense_block_parameters(3, 9, 4)  # x2, one block: F, G, H
    notes = "1 converted from L: gray.png; 1 skipped, corrupt or unreadable: cut.png"
    summary = [
        f"network: IRN x2, 1 blocks per stage, growth 4: {parameters:,} parameters",
        f"data: 4 images to train on ({folder}): {notes}",
        f"validation: 2 of 4 images every 1000 steps and after the last step: {notes}",
        f"device: CPU, {torch.get_num_threads()} threads, fp32",
    ]
    (run,) = (in_tmp / "runs").iterdir()
    log = (run / records.LOG).read_text()
    console = " ".join((said.out + said.err).split())  # as printed: lines wrapped at the console's width
    assert all(line in log and line in console for line in summary), log
    assert all(" ".join(line.split()) in console for line in log.splitlines() if line.strip())


def test_a_run_without_validation_says_what_it_will_not_have_and_the_flag_to_add(image_folder, in_tmp, capsys):
    train.main([*TINY, "--data", str(image_folder), "--steps", "1", "--name", "nv"])
    assert "no validation set: no scores, samples/ or best.pt; add --val DIR" in capsys.readouterr().err


def test_a_resumed_job_that_fails_at_start_up_says_so_in_train_log(image_folder, in_tmp, capsys):
    """The data moved away between two jobs: the second fails before its run folder opens, in one line, and the
    run's train.log ends with that job's lines and why it stopped, after the first job's."""
    train.main([*TINY, "--data", str(image_folder), "--steps", "1", "--name", "r"])
    image_folder.rename(in_tmp / "moved")
    with pytest.raises(SystemExit):
        train.main(["--resume", "runs/r", "--steps", "2"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    log = (in_tmp / "runs" / "r" / records.LOG).read_text().splitlines()
    assert log[-1] == f"stopped: {error.removeprefix('error: ')}"
    assert str(image_folder) in log[-1] and sum(line.startswith("network:") for line in log) == 1
