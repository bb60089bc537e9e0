"""Gradient-explosion tracking: record suspicious steps with their batch, skip non-finite ones.

The rule. A step is a spike when its loss, or the norm of the update it applies (the grad norm after
clipping: min(grad norm, --grad-clip)), exceeds --explosion-factor x the running median of the last
--explosion-window steps' (judged once 10 are known, or the whole window if it is shorter); a non-finite
loss or gradient is always recorded, and its update skipped.

Under DDP every rank judges alike (the losses are averaged over the ranks, the grad norm is the averaged
gradient's), and a record holds the whole global batch: each rank's share, gathered to rank 0 in rank order,
which writes it. `engine.replay` then reruns the batch whose mean losses and gradient the step logged.

Why the clipped norm: IRN's losses are sums over pixels, so its raw grad norms run from thousands to a
hundred thousand while the recipe clips at 10, and in ordinary early training they swing by an order of
magnitude from one step to the next while the loss falls smoothly (the demo's metrics.jsonl, grad_norm);
every such step is clipped to the same update. What derails a run is a loss that jumps, or an update that
grows, and both are judged. While the raw norms stay above the clip, as they do through IRN's early
training, every update is the clip and only the loss can flag a step. On CPU runs (the
summary and `python -m profiling.report RUN` count what was recorded; a run's metrics.jsonl holds the raw
grad norms to judge any other rule against):
  - the demo, `python -m engine.train` (x4, crop 32, 200 steps): nothing recorded, where the same factor on
    the raw grad norm flags ordinary steps of its first hundred;
  - `python -m engine.train --crop 16 --steps 1000 --val-every 0 --checkpoint-every 0`: 12 steps recorded,
    from step 734 on, each a loss 11 to 1,800x its running median (raw grad norms 8e3 to 2e8), the
    instability IRN is known for.
"""

import math
from collections import deque
from pathlib import Path
from statistics import median

import torch

from engine.errors import UserError
from engine.training import distributed
from profiling import records

MIN_HISTORY = 10  # steps seen before a running median judges


class TooManyBadSteps(UserError):
    pass


class ExplosionGuard:
    """Per step: 'ok', 'spike' (recorded, applied) or 'skipped' (non-finite: recorded, not applied)."""

    def __init__(self, folder, factor, window, max_bad, image_names, clip, ranks=None, keep_batches=100):
        self.folder, self.ranks = Path(folder) / "explosions", ranks or distributed.Ranks()
        self.factor, self.max_bad, self.image_names, self.clip = factor, max_bad, image_names, clip
        # A long run may spike thousands of times: the first batches are kept, the rest logged only.
        self.keep_batches, self.kept = keep_batches, len(list(self.folder.glob("step_*.pt")))
        self.history = {"loss": deque(maxlen=window), "update": deque(maxlen=window)}
        self.bad_in_row = 0
        self.log = None

    def state_dict(self):
        """The running statistics, so that a resumed run detects spikes from its first step."""
        return {"history": {k: list(v) for k, v in self.history.items()}, "bad_in_row": self.bad_in_row}

    def load_state_dict(self, state):
        history = state["history"]
        self.history["loss"].extend(history["loss"])
        # checkpoints of earlier releases kept the raw grad norms: their updates are those clipped
        updates = history["update"] if "update" in history else [min(n, self.clip) for n in history["grad_norm"]]
        self.history["update"].extend(updates)
        self.bad_in_row = state["bad_in_row"]

    def check(self, step, losses, grad_norm, batch):
        """Judge step `step` by its losses and its grad norm before clipping; records it if it is not 'ok'."""
        values = {"loss": sum(losses.values()), "update": min(grad_norm, self.clip)}
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
            k
            for k, v in values.items()
            if len(self.history[k]) >= min(MIN_HISTORY, self.history[k].maxlen)
            and v > self.factor * median(self.history[k])
        ]
        for k, v in values.items():
            self.history[k].append(v)
        if spiking:
            self._record(step, f"{'+'.join(spiking)} > {self.factor:g}x running median", losses, grad_norm, batch)
            return "spike"
        return "ok"

    def _record(self, step, kind, losses, grad_norm, batch):
        shares = distributed.gather_to_main(batch, self.ranks)  # every rank decides alike, and sends its share
        if not self.ranks.main:
            return
        batch = {key: torch.cat([share[key] for share in shares]) for key in batch}
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.log is None:
            self.log = records.JsonLines(self.folder.parent / records.EXPLOSIONS)
        batch_file = None
        if self.kept < self.keep_batches:
            batch_file = self.folder / f"step_{step:08d}.pt"
            torch.save(batch, batch_file)
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
                "world_size": self.ranks.world,  # the ranks whose shares the batch holds, in rank order
                "batch_file": str(batch_file.relative_to(self.folder.parent)) if batch_file else None,
            }
        )
