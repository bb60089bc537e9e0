"""A TensorBoard mirror of what a run records: every loss, the grad norm, lr, validation scores, phase times
and the sample grids, under the run folder's tensorboard/ (`--tensorboard`; `tensorboard --logdir runs`).

The run folder's JSONL records stay the source of truth; this only copies them as they are written.
"""

from pathlib import Path

from profiling.records import PHASES

FOLDER = "tensorboard"
SCALARS = ("loss", "forw_fit", "forw_ce", "back_rec", "grad_norm", "lr", "images_per_s")


def missing():
    """Why TensorBoard cannot be written here (None when it can)."""
    try:
        import tensorboard  # noqa: F401  (only whether it imports)
    except ImportError:
        return "--tensorboard needs the tensorboard package: pip install tensorboard (or drop --tensorboard)"
    return None


class TensorBoard:
    def __init__(self, run_folder):
        from torch.utils.tensorboard import SummaryWriter  # imported only when asked for

        self.writer = SummaryWriter(log_dir=str(Path(run_folder) / FOLDER))

    def metrics(self, record):
        """A metrics.jsonl line: losses, grad norm, lr, throughput and validation scores at its step."""
        step = record["step"] + 1
        for key in SCALARS:
            if record.get(key) is not None:
                self.writer.add_scalar(f"train/{key}", record[key], step)
        for key, value in record.items():
            if key.startswith("val_"):
                self.writer.add_scalar(f"validation/{key[4:]}", value, step)

    def phases(self, record):
        """A phases.jsonl line: each phase's milliseconds at its step."""
        for name in PHASES:
            if name in record:
                self.writer.add_scalar(f"phases_ms/{name}", record[name], record["step"] + 1)

    def image(self, tag, png_path, step):
        import numpy as np
        from PIL import Image

        with Image.open(png_path) as img:
            self.writer.add_image(tag, np.asarray(img.convert("RGB")), step, dataformats="HWC")

    def close(self):
        self.writer.close()
