"""Checkpoints of everything a run needs to continue exactly: weights, optimiser, schedule, scaler, RNGs,
the explosion guard's statistics, the step and the data position.

A run folder's checkpoints/ holds step_NNNNNNNN.pt files, the newest `kept` of them; last.pt, the
newest; and best.pt, the one with the best validation PSNR-Y. Each file is written aside, flushed to
disk, renamed into place and its folder flushed too: a crash or a full disk mid-write never leaves a
broken checkpoint behind and never harms an older one. last.pt and best.pt are hard links (a copy
where the file system has none), so pruning old steps never breaks them. Resuming takes the newest
checkpoint that reads back whole, and says which it skipped and why.
"""

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.model.rescaler import DamagedCheckpoint, read_checkpoint
from profiling import records

LATEST, BEST = "last.pt", "best.pt"
STEP_FILE = re.compile(r"^step_(\d{8})\.pt$")


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state():
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(v):
    return tuple(_as_tuple(x) for x in v) if isinstance(v, (list, tuple)) else v


def folder_of(run):
    return Path(run) / records.CHECKPOINTS


def step_file(run, step):
    return folder_of(run) / f"step_{step:08d}.pt"


def save(run, step, state, kept=2, best=False):
    """Write the checkpoint of `step` (with the RNG states), point last.pt (and best.pt) at it, and keep
    the newest `kept` step files. A write that fails leaves every earlier checkpoint as it was."""
    folder = folder_of(run)
    folder.mkdir(parents=True, exist_ok=True)
    path = step_file(run, step)
    aside = path.with_name(path.name + ".tmp")
    try:
        # Through a Python file, so that the kernel's own error (a full disk: ENOSPC) comes back as an
        # OSError; torch.save given a path reports it as a RuntimeError from its C++ writer.
        with open(aside, "wb") as f:
            torch.save({**state, "step": step, "rng": rng_state()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(aside, path)
        for name in (LATEST, BEST) if best else (LATEST,):
            _link(path, folder / name)
        _fsync(folder)
    except OSError as err:
        aside.unlink(missing_ok=True)
        intact = newest_step(run, below=step)
        kept_note = f"the checkpoint of step {intact} is intact" if intact is not None else "no earlier checkpoint"
        raise UserError(
            f"cannot write the checkpoint of step {step} ({err.strerror or type(err).__name__}); {kept_note}: "
            "free space or fix the folder, then --resume"
        ) from None
    prune(run, kept)
    return path


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link(target, name):
    """`name` becomes `target` (a hard link, replaced atomically; a copy where links are not supported)."""
    aside = name.with_name(name.name + ".tmp")
    aside.unlink(missing_ok=True)
    try:
        os.link(target, aside)
    except OSError:
        shutil.copyfile(target, aside)
    os.replace(aside, name)


def steps_saved(run):
    """The steps with a checkpoint file, newest first."""
    found = (STEP_FILE.match(p.name) for p in folder_of(run).glob("step_*.pt"))
    return sorted((int(m[1]) for m in found if m), reverse=True)


def newest_step(run, below=None):
    return next((s for s in steps_saved(run) if below is None or s < below), None)


def prune(run, kept):
    """Delete all but the newest `kept` step files (last.pt and best.pt are links of their own)."""
    for step in steps_saved(run)[kept:]:
        step_file(run, step).unlink(missing_ok=True)


def read(path):
    """A checkpoint's state, or a UserError saying why it cannot be used (DamagedCheckpoint: cut short)."""
    return read_checkpoint(path)


def load_newest(run, log=print):
    """The state of the newest whole checkpoint of a run folder. A damaged one (cut short) is skipped with one
    line of `log`; any other failure (a newer torch's file, objects weights_only refuses) stops the resume with
    its own line, since the older checkpoints were written the same way. Files a crash left half written aside
    (*.tmp) are removed: they never were checkpoints."""
    for aside in folder_of(run).glob("*.tmp"):
        aside.unlink(missing_ok=True)  # every rank reads the checkpoint; one may have removed it already
    steps = steps_saved(run)
    candidates = [step_file(run, s) for s in steps] or [folder_of(run) / LATEST]  # folders of older releases
    for path in candidates:
        if not path.is_file():
            continue
        try:
            return read(path)
        except DamagedCheckpoint as err:
            log(f"skipped {path.name}: {err}")
    raise UserError(f"no whole checkpoint in {folder_of(run)}; resume from a run folder that has saved one")
