"""The model, its optimiser and schedule, and one timed training step."""

import math
import warnings
from dataclasses import dataclass

import torch

from engine.data import codec, tensors
from engine.errors import UserError
from engine.model import dense_choice, execution, rescaler
from engine.model.losses import irn_losses, network_passes
from engine.training import checkpoints, distributed


@dataclass
class StepResult:
    """What one step did. `event`: "ok", "spike" (recorded by the guard, applied), "skipped" (non-finite:
    recorded, not applied) or "overflow" (fp16: the grad scaler skipped the update and backed off)."""

    step: int
    event: str
    losses: dict  # weighted losses by name, averaged over ranks
    grad_norm: float | None  # before clipping; None when the fp16 scaler overflowed
    lr: float  # the learning rate the step used


class LateValues:
    """A step's losses and grad norm, read by the host one step late.

    On a GPU the values are copied into one of two pinned buffers behind an event. The host waits on
    that event (a synchronize on it, not on the device) only after it has enqueued the next step: the
    wait bounds how far the host runs ahead of the GPU to one step, and in steady state the event has
    completed by then, so the wait costs nothing. On a CPU there is nothing to overlap and the values are
    read as they are.
    """

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.buffers, self.turn, self.waiting = [], 0, None

    def put(self, values, meta):
        """Queue this step's `values` (a 1-d device tensor) with `meta`; returns the previous step's, if any."""
        if self.cuda:
            if not self.buffers:
                self.buffers = [torch.empty(values.shape, dtype=values.dtype, pin_memory=True) for _ in range(2)]
            host = self.buffers[self.turn]
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.turn ^= 1
        else:
            host, event = values, None
        previous, self.waiting = self.waiting, (host, event, meta)
        return self.read(previous)

    def drain(self):
        """The last queued step's values (a sync on a GPU: for the end of a run and scheduled work)."""
        previous, self.waiting = self.waiting, None
        return self.read(previous)

    @staticmethod
    def read(entry):
        if entry is None:
            return None
        host, event, meta = entry
        if event is not None:
            event.synchronize()
        return host.tolist(), meta


class Trainer:
    """IRN, its optimiser and schedule, and one training step.

    engine/training/restoration.py trains a CRM on a frozen IRN with the same step: it overrides what is
    built (`build_model`, `trained_network`, `irn`), what a checkpoint holds (`weights`, `load_weights`) and the
    losses of a batch (`losses`)."""

    def __init__(self, cfg, device, ranks=None):
        self.cfg, self.device, self.ranks = cfg, device, ranks or distributed.Ranks()
        self.model = self.build_model(cfg).to(device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # Fused Adam skips an update on the device when told to (found_inf): no host sync per step.
        self.optimizer = torch.optim.Adam(
            self.params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=True
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, cfg.lr_milestones, cfg.lr_gamma)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.late = LateValues(device)
        execution.configure_backends(cfg.cudnn_benchmark, cfg.tf32)
        execution.set_subnet_precision(self.model, cfg.precision)
        execution.use_invertible_backprop(self.model, cfg.invertible_backprop)
        # Fast kernels swap ops inside the same modules; compile traces whichever ops are in place.
        self.kernel_note = execution.fast_kernels_unavailable(device) if cfg.fast_kernels else None
        self.dense_note, self.dense_choices = None, []
        if cfg.fast_kernels and self.kernel_note is None:
            self.dense_note = execution.dense_kernels_unavailable(device)
            execution.use_fast_kernels(self.model, dense=self.dense_note is None)
            if self.dense_note is None:
                self.dense_choices = self.choose_dense_kernels()
        self.net, self.allreduce = self.trained_network(), None
        if self.ranks.active:
            self.net, self.allreduce = distributed.wrap(self.net, self.ranks, device)
        if cfg.compile != "off":
            self.net = execution.compile_model(self.net, cfg.compile, device)

    @staticmethod
    def build_model(cfg):
        return rescaler.build(cfg.scale, blocks_per_stage=cfg.blocks_per_stage, growth=cfg.growth, clamp=cfg.clamp)

    def trained_network(self):
        """The module whose forward the step differentiates: what DDP and torch.compile wrap."""
        return self.model

    @property
    def irn(self):
        """The IRN that --init-from fills."""
        return self.model

    def weights(self):
        """A checkpoint's network: its weights and the architecture they are of."""
        return {"model": self.model.state_dict(), "arch": self.model.arch}

    def load_weights(self, state):
        self.model.load_state_dict(state["model"])

    def choose_dense_kernels(self):
        """Fused or cuDNN for each dense-block shape of a training step (engine/model/dense_choice.py), timed
        on this rank's share of a batch without moving the run's random streams."""
        cfg = self.cfg
        hr = torch.zeros(cfg.batch_size // self.ranks.world, 3, cfg.crop, cfg.crop, device=self.device)
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                return dense_choice.choose(self.model, hr, cfg.dense_kernels, dense_choice.time_block)
        except ValueError as err:  # a fused kernel's own limit (int32 indexing, a grid axis) at this shape
            hint = "use a smaller --batch-size or --crop, or no --fast-kernels"
            raise UserError(f"--fast-kernels: {err}; {hint}") from None

    def state(self, step):
        return {
            **self.weights(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": step,
            "config": self.cfg.to_json(),
        }

    def load_state(self, state):
        self.load_weights(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] and self.scaler.is_enabled():  # an fp32 or bf16 run has no scale to resume
            self.scaler.load_state_dict(state["scaler"])
        checkpoints.set_rng_state(state["rng"])

    def initialise_optimizer_state(self):
        """Create Adam's moments with a skipped update (weights untouched), as after a first step."""
        for p in self.params:
            p.grad = torch.zeros_like(p)
        self.optimizer.found_inf = torch.ones(())
        self.optimizer.step()
        del self.optimizer.found_inf
        self.optimizer.zero_grad(set_to_none=True)

    def advance_schedule(self):
        """The recipe's milestones count steps, skipped ones too; torch warns when no update came first."""
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`"
            )
            self.scheduler.step()

    def step(self, batch, timer, guard, step):
        """Enqueue one optimisation step of `batch`, timed phase by phase into `timer`.

        Returns the previous step's StepResult (None for the first): its values are read one step late.
        """
        cfg, lr = self.cfg, self.optimizer.param_groups[0]["lr"]
        with timer.phase("h2d"):
            hr = tensors.to_float(batch["hr"].to(self.device, non_blocking=True))
            noise = batch["noise"].to(self.device, non_blocking=True)
            lr_ref = batch["lr_ref"].to(self.device, non_blocking=True)
        losses = self.losses(hr, noise, lr_ref, self.channel(batch, timer), timer, step)
        with timer.phase("loss"):
            total = sum(losses.values())
        with timer.phase("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
        with timer.phase("optimizer"):
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip, foreach=True)
            # Losses averaged over ranks (the grad norm already is), so every rank decides alike.
            averaged = distributed.mean_over_ranks(torch.stack(list(losses.values())).detach(), self.ranks)
            values = torch.cat([averaged, norm.reshape(1)])
            self.update(skip=~torch.isfinite(values).all())
            self.advance_schedule()
            previous = self.late.put(values, (step, lr, list(losses), batch))
        if self.allreduce is not None:
            timer.note("allreduce", self.allreduce.take(), clock=self.allreduce.clock)
        return self.outcome(previous, guard)

    def losses(self, hr, noise, lr_ref, channel, timer, step):
        """IRN's weighted losses of a batch by name (the forward and loss phases); `channel` (None: lossless)
        carries the 8-bit LR to the upscale."""
        with timer.phase("forward"):
            y, z, reconstruction = network_passes(self.net, hr, noise, self.cfg.z_scale, channel)
        with timer.phase("loss"):
            return irn_losses(y, z, reconstruction, hr, lr_ref, **self.cfg.loss_weights)

    def channel(self, batch, timer):
        """What carries a batch's 8-bit LR from downscale to upscale: --codec at each sample's quality, the
        gradient passed straight through, timed as the step's codec phase; None without a codec."""
        if self.cfg.codec == "none":
            return None

        def send(lr):
            with timer.phase("codec"):
                return codec.compress(lr, self.cfg.codec, batch["quality"])[0]

        return send

    def drain(self, guard):
        """The last enqueued step's StepResult, waiting for its values (None if there is none)."""
        return self.outcome(self.late.drain(), guard)

    def update(self, skip):
        """Adam's update, skipped on the device when `skip` (a non-finite loss or gradient) is true.

        The fused Adam honours `found_inf` as it does under a GradScaler: a skipped step leaves the
        weights and the optimiser state (step count included) untouched. With fp16 the scaler's
        update then backs the scale off, as its own overflow check saw the same non-finite gradients.
        """
        self.optimizer.found_inf = skip.float()
        self.optimizer.step()
        del self.optimizer.found_inf
        self.scaler.update()

    def outcome(self, read, guard):
        """A step's StepResult from its values, once they reach the host; the guard judges them here."""
        if read is None:
            return None
        (*loss_values, norm), (step, lr, names, batch) = read
        losses = dict(zip(names, loss_values, strict=True))
        # fp16: finite losses with an infinite scaled gradient are the scaler's business (the update was
        # skipped and the scale backed off), not an explosion.
        overflow = self.scaler.is_enabled() and not math.isfinite(norm) and all(map(math.isfinite, loss_values))
        event = "overflow" if overflow else guard.check(step, losses, norm, batch)
        return StepResult(step, event, losses, None if overflow else norm, lr)
