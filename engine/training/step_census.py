"""The census of this project's training step: one step of a config counted on fake tensors by the profiling
runtime's counter (profiling/runtime/counting.py), as census.json and `python -m profiling.census` hold it."""

from dataclasses import replace

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from engine.data import codec, crops
from engine.model import execution
from engine.training.restoration import trainer_for
from profiling.runtime.counting import StepCounter


def census(cfg, fast_kernels=None, fused_dense=True):
    """One training step of `cfg` counted on fake tensors (profiling/runtime/counting.py): no compute, no GPU.

    `fast_kernels` counts the fused path (default: the config's; `fused_dense`: with the dense blocks fused),
    whatever device this machine has; the Triton ops' fake implementations stand in for them.
    """
    fast = cfg.fast_kernels if fast_kernels is None else fast_kernels
    counter = _counted_step(cfg, fast, fused_dense, _launches())
    setting = {k: getattr(cfg, k) for k in ("scale", "batch_size", "crop", "precision", "blocks_per_stage", "growth")}
    return counter.census(setting | {"fast_kernels": fast})


def dense_block_calls(cfg):
    """Every call of the fused dense-block ops (forward and backward) in one training step of `cfg`, as
    (op name, arguments), meta tensors standing in for the step's fake ones."""
    calls = []

    def recording(op, count):
        def launches(args):
            calls.append((op, args))
            return count(args)

        return launches

    launches = _launches()
    launches |= {op: recording(op, count) for op, count in launches.items() if op.startswith("irn::dense")}
    _counted_step(cfg, True, True, launches)
    return [(op, torch.utils._pytree.tree_map_only(torch.Tensor, _as_meta, args)) for op, args in calls]


def _launches():
    from kernels import coupling, dense, haar

    return {**haar.LAUNCHES, **coupling.LAUNCHES, **dense.LAUNCHES, **codec.LAUNCHES}


def _as_meta(t):
    """A meta tensor with t's shape, strides, storage offset and dtype."""
    span = t.storage_offset() + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True)) + 1
    return torch.empty(span, dtype=t.dtype, device="meta").as_strided(t.shape, t.stride(), t.storage_offset())


def _counted_step(cfg, fast, fused_dense, launches):
    """The StepCounter of one training step of `cfg` run on fake tensors (`fast`: on the fused path)."""
    from kernels import dense

    counter = StepCounter(launches=launches, traffic=dense.TRAFFIC)
    # Built for real (FrEIA's Haar computes its permutation from values); the step then runs on fake
    # tensors, the real weights standing in as fake ones.
    trainer = trainer_for(replace(cfg, fast_kernels=False, compile="off"), torch.device("cpu"))
    trainer.initialise_optimizer_state()  # a steady-state step: Adam's moments exist already
    if fast:
        execution.use_fast_kernels(trainer.model, dense=fused_dense)
    with FakeTensorMode(allow_non_fake_inputs=True):
        batch = crops.empty_batch(cfg.batch_size, cfg.crop, cfg.scale, codec=cfg.codec != "none")
        with counter.counting():
            trainer.step(batch, counter, guard=None, step=0)
    return counter


def census_json(cfg, fast_kernels=None, fused_dense=True):
    """census(...) as census.json holds it. A fused step also carries the totals that GPUs on either side
    of the dense kernels' compute capability run ("by_capability": the dense blocks on cuDNN before it,
    fused from it), so that forecasts for other GPUs count what those GPUs would run."""
    from kernels.dense import MIN_CAPABILITY

    counted = census(cfg, fast_kernels, fused_dense).to_json()
    if counted["setting"]["fast_kernels"]:
        other = census(cfg, True, not fused_dense).to_json()
        before, after = (other, counted) if fused_dense else (counted, other)
        totals = ("flops_per_step", "bytes_per_step", "kernels_per_step")
        counted["by_capability"] = {
            "capability": MIN_CAPABILITY,
            "before": {k: before[k] for k in totals},
            "from": {k: after[k] for k in totals},
        }
    return counted
