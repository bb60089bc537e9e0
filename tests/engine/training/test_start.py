"""The records a run starts with (engine/training/start.py): the dense kernels' choice per shape, in env.jsonl."""

import torch

from engine.model import dense_choice, execution
from engine.training import config, start
from engine.training.step import Trainer
from profiling import records
from tests.conftest import TINY


def test_the_trainer_chooses_the_dense_kernels_per_shape_and_env_jsonl_records_it(monkeypatch, tmp_path):
    """With fused kernels available (here: said to be) the trainer times each dense-block shape of its step
    both ways (a stand-in timer: fused is faster on 3 input channels) and env.jsonl holds the times and
    choices that the blocks run with."""
    monkeypatch.setattr(execution, "fast_kernels_unavailable", lambda device: None)
    monkeypatch.setattr(execution, "dense_kernels_unavailable", lambda device: None)
    timed = []

    def stand_in(name, block, x):
        timed.append((name, tuple(x.shape)))
        return {"cudnn": 2.0, "fused": 1.0 if block.conv1.in_channels == 3 else 3.0}[name]

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
