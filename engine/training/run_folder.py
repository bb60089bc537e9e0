"""A training run's folder: created (or found for --resume), with the record of where and how it ran.

What goes inside and how it is read is profiling/records.py's business: the folder is the contract
between training and the report.
"""

import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from engine.errors import UserError
from kernels.precision import tf32_convolutions
from profiling import records

DISTRIBUTION = "irnscope"


def next_free(root):
    taken = {int(p.name[4:]) for p in root.glob("run_*") if p.name[4:].isdigit()}
    return root / f"run_{max(taken, default=0) + 1}"


def create(name=None, root=None):
    """A new, empty run folder under `root` (records.runs_root) (the caller writes its config.json); `name` must not
    exist yet."""
    root = records.runs_root(root)
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        folder = root / name if name else next_free(root)
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:  # named: taken; numbered: another job started at the same moment took it
            if name:
                raise UserError(
                    f"run folder {folder} exists; resume it with --resume {folder} or choose another --name"
                ) from None
    raise UserError(f"cannot create a new run folder in {root} (is its listing readable?); give one with --name")


def environment(device, extra=None):
    """Versions, device, git commit and command line: what is needed to reproduce a run."""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("FrEIA", "triton", "numpy", "nvidia-ml-py", "py-spy", DISTRIBUTION):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    info = {
        "command": " ".join([Path(sys.executable).name, "-m", "engine.train", *sys.argv[1:]]),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "versions": versions,
        "device": describe_device(device),
        "backends": {
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "conv_tf32": tf32_convolutions(),
            "matmul_tf32": torch.backends.cuda.matmul.fp32_precision == "tf32",
        },
    }
    return {**info, **(extra or {})}


def describe_device(device):
    device = torch.device(device)
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "name": p.name,
            "index": device.index,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}",
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def git_commit():
    here = Path(__file__).resolve().parents[2]
    git = ["git", "-C", str(here)]
    try:
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
