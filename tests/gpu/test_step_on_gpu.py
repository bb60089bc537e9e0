"""A training step on a real GPU: no host sync beyond the designed one, and the fused path's agreement."""

import copy
from dataclasses import replace

import pytest
import torch

from engine.data import crops
from engine.training import config
from engine.training.explosion_guard import ExplosionGuard
from engine.training.step import Trainer
from profiling.runtime.timer import PhaseTimer


def trainer_and_batch(tmp_path, **overrides):
    cfg, _ = config.resolve(["--config", "irn_x4", "--batch-size", "4", "--crop", "48"])
    cfg = replace(cfg, **overrides)
    trainer = Trainer(cfg, torch.device("cuda"))
    batch = {k: v.pin_memory() for k, v in crops.random_batch(cfg.batch_size, cfg.crop, cfg.scale).items()}
    guard = ExplosionGuard(tmp_path, 10.0, 200, 5, ["random"], clip=10.0)
    return trainer, batch, guard


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"fast_kernels": True},
        {"precision": "bf16"},
        {"fast_kernels": True, "precision": "bf16"},
        {"fast_kernels": True, "precision": "fp16"},
        {"invertible_backprop": True},
    ],
    ids=["eager", "fast", "bf16", "fast-bf16", "fast-fp16", "inverting"],
)
def test_a_training_step_makes_no_host_sync_after_warm_up(tmp_path, overrides):
    """The step enqueues everything, timer and all; its values are read one step late, from a step long
    finished (an event wait, which the sync debug mode rightly does not count)."""
    trainer, batch, guard = trainer_and_batch(tmp_path, **overrides)
    timer = PhaseTimer("cuda", sink=None)
    for step in range(3):  # allocation, cuDNN autotuning, Triton compiles
        trainer.step(batch, timer, guard, step)
        timer.end_step(step)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(3, 6):
            trainer.step(batch, timer, guard, step)
            timer.end_step(step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.drain(guard).step == 5


def test_fast_path_step_equals_the_reference_step(tmp_path, fp32_precision_restored):
    """One fp32 step (--tf32 false) of the fused path against the FrEIA reference: the losses, the grad
    norm and every clipped gradient. Gradients, not updated weights: Adam's first update is about lr
    times the gradient's sign, whatever its size, so the weights would hide a gradient off by a factor."""
    reference, batch, guard = trainer_and_batch(tmp_path, tf32=False)
    fast, _, _ = trainer_and_batch(tmp_path, tf32=False, fast_kernels=True)
    fast.model.load_state_dict(copy.deepcopy(reference.model.state_dict()))
    timer = PhaseTimer("cuda", enabled=False)
    results = []
    for trainer in (reference, fast):
        trainer.step(batch, timer, guard, 0)
        results.append(trainer.drain(guard))
    for key, value in results[0].losses.items():
        assert results[1].losses[key] == pytest.approx(value, rel=1e-4)
    assert results[1].grad_norm == pytest.approx(results[0].grad_norm, rel=1e-4)
    for a, b in zip(reference.model.parameters(), fast.model.parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:  # 1e-3 of the largest entry: 16 blocks of fp32 sums in other orders
            torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-3 * a.grad.abs().max().item())
