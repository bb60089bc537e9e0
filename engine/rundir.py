"""Run folders: runs/run_N holding the resolved config, an environment record and everything a run writes."""
import json
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from engine.errors import UserError

RUNS = Path("runs")


def next_free(root=RUNS):
    taken = {int(p.name[4:]) for p in root.glob("run_*") if p.name[4:].isdigit()}
    return root / f"run_{max(taken, default=0) + 1}"


def create(name=None, root=RUNS):
    """A new, empty run folder (the caller writes its config.json); `name` must not exist yet."""
    root.mkdir(parents=True, exist_ok=True)
    folder = root / name if name else next_free(root)
    if name and folder.exists():
        raise UserError(f"run folder {folder} exists; resume it with --resume {folder} or choose another --name")
    folder.mkdir(parents=True)
    return folder


def find(name_or_path, root=RUNS):
    """A run folder given as a path or a name under runs/; one line listing the runs if missing."""
    path = Path(name_or_path)
    for candidate in (path, root / path):
        if (candidate / "config.json").is_file():
            return candidate
    existing = sorted((p.name for p in root.glob("*") if (p / "config.json").is_file()), key=_natural)
    listing = ", ".join(existing[-10:]) if existing else "none yet (train one with python -m engine.train)"
    raise UserError(f"no run folder {name_or_path!r}; runs under {root}/: {listing}")


def _natural(name):
    return [int(t) if t.isdigit() else t for t in name.replace("_", " ").split()]


def read_config(folder):
    return json.loads((Path(folder) / "config.json").read_text())


def write_json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=2, default=str) + "\n")


def environment(device, extra=None):
    """Versions, device, git commit and command line: what is needed to reproduce a run."""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("FrEIA", "triton", "numpy", "nvidia-ml-py", "py-spy", "irn-engine"):
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
    }
    return {**info, **(extra or {})}


def describe_device(device):
    device = torch.device(device)
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "name": p.name,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}",
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def git_commit():
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


class JsonLines:
    """An append-only, line-buffered .jsonl file: a crash leaves only whole lines behind."""

    def __init__(self, path):
        self.file = open(path, "a", buffering=1)

    def write(self, record):
        self.file.write(json.dumps(record) + "\n")

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_jsonl(path):
    """Records of a .jsonl file, ignoring a last line cut short by a crash."""
    records = []
    if not Path(path).is_file():
        return records
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
