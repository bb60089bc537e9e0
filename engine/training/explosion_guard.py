"""Gradient-explosion tracking: record suspicious steps with their batch, skip non-finite ones."""

import math
from collections import deque
from pathlib import Path
from statistics import median

import torch

from engine.errors import UserError
from profiling import records


class TooManyBadSteps(UserError):
    pass


class ExplosionGuard:
    """Per step: 'ok', 'spike' (recorded, applied) or 'skipped' (non-finite: recorded, not applied)."""

    def __init__(self, folder, factor, window, max_bad, image_names, write=True, keep_batches=100):
        self.folder, self.write = Path(folder) / "explosions", write
        self.factor, self.max_bad, self.image_names = factor, max_bad, image_names
        # A long run may spike thousands of times: the first batches are kept, the rest logged only.
        self.keep_batches, self.kept = keep_batches, len(list(self.folder.glob("step_*.pt")))
        self.history = {"loss": deque(maxlen=window), "grad_norm": deque(maxlen=window)}
        self.bad_in_row = 0
        self.log = None

    def state_dict(self):
        """The running statistics, so that a resumed run detects spikes from its first step."""
        return {"history": {k: list(v) for k, v in self.history.items()}, "bad_in_row": self.bad_in_row}

    def load_state_dict(self, state):
        for key, values in state["history"].items():
            self.history[key].extend(values)
        self.bad_in_row = state["bad_in_row"]

    def check(self, step, losses, grad_norm, batch):
        values = {"loss": sum(losses.values()), "grad_norm": grad_norm}
        if not all(math.isfinite(v) for v in [*losses.values(), grad_norm]):
            self.bad_in_row += 1
            self._record(step, "non-finite", losses, grad_norm, batch)
            if self.bad_in_row >= self.max_bad:
                raise TooManyBadSteps(
                    f"{self.bad_in_row} non-finite steps in a row (last at step {step}); the run stopped with its last "
                    f"good checkpoint kept. Inspect {self.folder}, then lower --lr or --grad-clip and --resume"
                )
            return "skipped"
        self.bad_in_row = 0
        spiking = [
            k for k, v in values.items() if len(self.history[k]) >= 10 and v > self.factor * median(self.history[k])
        ]
        for k, v in values.items():
            self.history[k].append(v)
        if spiking:
            self._record(step, f"{'+'.join(spiking)} > {self.factor:g}x running median", losses, grad_norm, batch)
            return "spike"
        return "ok"

    def _record(self, step, kind, losses, grad_norm, batch):
        if not self.write:  # other ranks take the same decisions; rank 0 keeps the record
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.log is None:
            self.log = records.JsonLines(self.folder.parent / records.EXPLOSIONS)
        batch_file = None
        if self.kept < self.keep_batches:
            batch_file = self.folder / f"step_{step:08d}.pt"
            torch.save({k: v.cpu() if torch.is_tensor(v) else v for k, v in batch.items()}, batch_file)
            self.kept += 1
        images = [self.image_names[i] for i in batch["image"].tolist()]
        self.log.write(
            {
                "step": step,
                "kind": kind,
                "losses": losses,
                "grad_norm": grad_norm,
                "images": images,
                "boxes": batch["box"].tolist(),
                "batch_file": str(batch_file.relative_to(self.folder.parent)) if batch_file else None,
            }
        )
