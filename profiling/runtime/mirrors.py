"""Mirrors of what a run records, in the dashboards researchers use beside the run folder: TensorBoard
(`--tensorboard`: the run folder's tensorboard/, `tensorboard --logdir runs`) and Weights & Biases (`--wandb`:
the run folder's wandb/, offline unless the environment says otherwise, e.g. WANDB_MODE=online, the run named
after its folder and resumed under the same id).

Both get every loss, the grad norm, lr, throughput, validation scores, phase times and the sample grids, at the
step numbers the run folder gives them. The run folder's JSONL records stay the source of truth: a mirror only
copies them as they are written. Each package is optional and imported only when its mirror is asked for.
"""

import hashlib
import os
from pathlib import Path

from profiling.records import PHASES

SCALARS = ("loss", "forw_fit", "forw_ce", "back_rec", "grad_norm", "lr", "images_per_s")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # flag -> the package it needs


def missing(flag):
    """Why the mirror of `--flag` cannot be written here (None when it can)."""
    try:
        __import__(PACKAGES[flag])
    except ImportError:
        return f"--{flag} needs the {PACKAGES[flag]} package: pip install {PACKAGES[flag]} (or drop --{flag})"
    return None


def metric_values(record):
    """(step, {tag: value}) of a metrics.jsonl line: its losses, grad norm, lr, throughput and validation scores."""
    values = {f"train/{key}": record[key] for key in SCALARS if record.get(key) is not None}
    values |= {f"validation/{key[4:]}": value for key, value in record.items() if key.startswith("val_")}
    return record["step"], values


def phase_values(record):
    """(step, {tag: value}) of a phases.jsonl line: each phase's milliseconds."""
    return record["step"], {f"phases_ms/{name}": record[name] for name in PHASES if name in record}


class Mirror:
    """Hands a run's records to a dashboard; a backend says how it writes values and pictures."""

    def metrics(self, record):
        self.write(*metric_values(record))

    def phases(self, record):
        self.write(*phase_values(record))

    def image(self, tag, png_path, step):
        import numpy as np
        from PIL import Image

        with Image.open(png_path) as img:
            self.picture(tag, np.asarray(img.convert("RGB")), step)


class TensorBoard(Mirror):
    def __init__(self, run_folder):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_folder) / "tensorboard"))

    def write(self, step, values):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def picture(self, tag, pixels, step):
        self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def close(self):
        self.writer.close()


class WeightsAndBiases(Mirror):
    """One W&B run per run folder: its id comes from the folder's absolute path, so every job of the run (a
    resume) continues the same W&B run. Values are logged against the run's own step ("step"), as the records
    number them, since phase timings may reach the mirror a step after the metrics of the same step."""

    def __init__(self, run_folder, project="irnscope"):
        import wandb

        folder = Path(run_folder).resolve()
        run_id = f"{folder.name}-{hashlib.sha1(str(folder).encode()).hexdigest()[:8]}"
        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", project),
            name=folder.name,
            id=run_id,
            resume="allow",
            dir=str(folder),
            mode=os.environ.get("WANDB_MODE", "offline"),
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def write(self, step, values):
        self.run.log({"step": step, **values})

    def picture(self, tag, pixels, step):
        self.run.log({"step": step, tag: self.wandb.Image(pixels)})

    def close(self):
        self.run.finish()


MIRRORS = {"tensorboard": TensorBoard, "wandb": WeightsAndBiases}
