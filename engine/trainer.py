"""The model, its optimiser and schedule, and one timed training step."""

import math
import warnings
from dataclasses import dataclass

import torch

import engine
from engine import checkpoint, data, distributed, ops
from engine.losses import irn_losses, network_passes


@dataclass
class StepResult:
    """What one step did. `event`: "ok", "spike" (recorded by the guard, applied), "skipped" (non-finite:
    recorded, not applied) or "overflow" (fp16: the grad scaler skipped the update and backed off)."""

    event: str
    losses: dict  # weighted losses by name, averaged over ranks
    grad_norm: float | None  # before clipping; None when the fp16 scaler overflowed


class Trainer:
    """The model, its optimiser and schedule, and one training step."""

    def __init__(self, cfg, device, ranks=None):
        self.cfg, self.device, self.ranks = cfg, device, ranks or distributed.Ranks()
        self.model = engine.build(
            cfg["scale"], blocks_per_stage=cfg["blocks_per_stage"], growth=cfg["growth"], clamp=cfg["clamp"]
        ).to(device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(
            self.params, lr=cfg["lr"], betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"], foreach=True
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, cfg["lr_milestones"], cfg["lr_gamma"])
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg["precision"] == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg["precision"])
        # Fast kernels swap ops inside the same modules; compile traces whichever ops are in place.
        self.kernel_note = ops.fast_kernels_unavailable(device) if cfg["fast_kernels"] else None
        if cfg["fast_kernels"] and self.kernel_note is None:
            ops.use_fast_kernels(self.model)
        self.net, self.allreduce = self.model, None
        if self.ranks.active:
            self.net, self.allreduce = distributed.wrap(self.model, self.ranks, device)
        if cfg["compile"] != "off":
            self.net = ops.compile_model(self.net, cfg["compile"], device)

    def state(self, step):
        return {
            "model": self.model.state_dict(),
            "arch": self.model.arch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": step,
            "config": self.cfg,
        }

    def load_state(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])

    def advance_schedule(self):
        """The recipe's milestones count steps, skipped ones too; torch warns when no update came first."""
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`"
            )
            self.scheduler.step()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def step(self, batch, timer, guard, step):
        """One optimisation step of `batch`, timed phase by phase into `timer`."""
        cfg, scale = self.cfg, self.cfg["scale"]
        with timer.phase("h2d"):
            hr = data.to_float(batch["hr"].to(self.device, non_blocking=True))
            noise = batch["noise"].to(self.device, non_blocking=True)
            lr_ref = data.bicubic_down(hr, scale)
        with timer.phase("forward"), self.autocast():
            y, z, reconstruction = network_passes(self.net, hr, noise, cfg["z_scale"])
        with timer.phase("loss"), self.autocast():
            losses = irn_losses(y.float(), z.float(), reconstruction.float(), hr, lr_ref, cfg)
            total = sum(losses.values())
        with timer.phase("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
        with timer.phase("optimizer"):
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.params, cfg["grad_clip"])
            # The one host sync per step: the explosion guard must see the values before the update.
            # Losses are averaged over ranks (the grad norm already is) so every rank decides alike.
            averaged = distributed.mean_over_ranks(torch.stack(list(losses.values())).detach(), self.ranks)
            *values, norm = torch.cat([averaged, norm.reshape(1)]).tolist()
            losses = dict(zip(losses, values, strict=True))
            # fp16: finite losses with an infinite scaled gradient are the scaler's business (it skips the
            # update and backs off), not an explosion.
            overflow = self.scaler.is_enabled() and not math.isfinite(norm) and all(map(math.isfinite, values))
            verdict = "overflow" if overflow else guard.check(step, losses, norm, batch)
            if verdict != "skipped":  # a skipped step leaves weights and optimiser state untouched
                self.scaler.step(self.optimizer)
                self.scaler.update()
            self.advance_schedule()
        if self.allreduce is not None:
            timer.note("allreduce", self.allreduce.take())
        return StepResult(verdict, losses, None if overflow else norm)
