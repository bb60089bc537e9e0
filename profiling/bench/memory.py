"""One training step with and without backprop by inversion, side by side: activations saved for the backward,
peak allocated memory, time, and the error of the recomputed inputs."""

import json
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from engine.data import crops, tensors
from engine.model.invertible_backprop import reconstruction_errors, saved_bytes
from engine.model.irn import IMAGE_CHANNELS, quantize
from engine.model.losses import irn_losses, network_passes
from engine.training.step import Trainer
from profiling.bench.figures import Figures, device_name, shape, sync, timed
from profiling.bench.step import step_config, step_runner
from profiling.runtime.timer import PhaseTimer


def activation_bytes(cfg):
    """Bytes autograd saves for the backward in one step's two passes and losses, counted on fake
    tensors at the step's real size (no compute)."""
    trainer = Trainer(replace(cfg, fast_kernels=False, compile="off"), torch.device("cpu"))
    model, exclude = trainer.model, [*trainer.model.parameters(), *trainer.model.buffers()]
    with FakeTensorMode(allow_non_fake_inputs=True):
        batch = crops.empty_batch(cfg.batch_size, cfg.crop, cfg.scale)
        hr = tensors.to_float(batch["hr"])

        def step():
            y, z, reconstruction = network_passes(model, hr, batch["noise"])
            return sum(irn_losses(y, z, reconstruction, hr, batch["lr_ref"], **cfg.loss_weights).values())

        return saved_bytes(step, exclude=exclude)[1]


def peak_bytes(run, device):
    """The peak of allocated memory over one step: the CUDA allocator's, or on a CPU the 'Total
    Allocated' of torch.profiler's memory events."""
    timer = PhaseTimer(device, enabled=False)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        run(timer)
        sync(device)
        return torch.cuda.max_memory_allocated(device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        run(timer)
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.loads(Path(f.name).read_text())["traceEvents"]
    return max((e["args"].get("Total Allocated", 0) for e in events if e.get("name") == "[memory]"), default=0)


def largest_reconstruction_errors(run, device):
    """The largest error of the inputs that backprop by inversion recomputes, in the HR -> LR pass and in
    the LR, z -> HR pass of the bench's batch, at the model's weights as they are."""
    model, batch = run.trainer.model, run.batch
    with torch.no_grad():
        hr = tensors.to_float(batch["hr"].to(device))
        y = model(hr)[:, :IMAGE_CHANNELS]
        upscale_input = torch.cat((quantize(y), batch["noise"].to(device)), 1)
    return max(reconstruction_errors(model.net, hr)), max(reconstruction_errors(model.net, upscale_input, rev=True))


def bench_memory(args, device):
    """One step with and without backprop by inversion, side by side in one process."""
    columns = ["backprop", "activations saved (GiB)", "peak allocated (GiB)", "ms/step"]
    clock = "the CUDA allocator" if device.type == "cuda" else "torch.profiler's CPU memory events"
    result = Figures(f"memory of one step at {shape(args)} ({device_name(device)})", columns)
    figures = {}
    for inverting in (False, True):
        cfg = step_config(args, {"invertible_backprop": inverting})
        run = step_runner(cfg, device)
        ms = timed(partial(run, PhaseTimer(device, enabled=False)), device, warmup=args.warmup, repeats=args.steps)
        figures[inverting] = (activation_bytes(cfg), peak_bytes(run, device), ms)
        if inverting:
            errors = largest_reconstruction_errors(run, device)
        saved, peak, _ = figures[inverting]
        name = "by inversion" if inverting else "standard"
        result.rows.append([name, f"{saved / 2**30:.3f}", f"{peak / 2**30:.3f}", f"{ms:.1f}"])
    (saved0, peak0, ms0), (saved1, peak1, ms1) = figures[False], figures[True]
    result.rows.append(["ratio", f"{saved1 / saved0:.1%}", f"{peak1 / peak0:.1%}", f"{ms1 / ms0:.2f}x"])
    result.notes.append(f"activations: saved-tensor hooks on fake tensors at this size; peak: {clock}")
    steps = args.warmup + args.steps + 1  # the timed ones, then the one whose peak is measured
    tf32 = device.type == "cuda" and cfg.tf32
    result.notes.append(
        f"largest error of the inputs recomputed by inversion ({'TF32' if tf32 else 'fp32'} convolutions, at the "
        f"weights {steps} steps from their initialisation): HR -> LR {errors[0]:.1e}, LR, z -> HR {errors[1]:.1e}"
    )
    return result
