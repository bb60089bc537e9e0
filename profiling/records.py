"""The run folder: the one contract between training (which writes it) and the report (which reads it).

    runs/run_N/
        config.json          the resolved config (flat: every key a flag)
        env.jsonl            versions, device, git commit, command line, the data read: one line per job
        metrics.jsonl        per step: losses, grad norm, lr, throughput, validation, events
        phases.jsonl         per step: wall time and each phase in ms     (rank N > 0: phases.rankN.jsonl)
        gpu.jsonl            NVML (or process) samples                    (rank N > 0: gpu.rankN.jsonl)
        explosions.jsonl     recorded gradient explosions, batches in explosions/
        census.json          one training step counted: FLOPs, kernels, bytes (profiling/runtime/counting.py)
        train.log            everything the trainer printed, every job of the run
        forecast.json        the fused dense kernels' issue-bound step, from their SASS (profiling.bench forecast --run)
        torch_profile.json   top ops of a torch.profiler capture, torch_trace.json its Chrome trace
        pyspy.*              py-spy captures
        checkpoints/

Steps are numbered from 1 everywhere: step N is the N-th optimisation step of the run (the record of step N,
step_N.pt the state after it, samples/step_N.png the validation after it, an explosion at step N, what
`engine.replay --step N` replays); a job's env.jsonl line gives `start_step`, the steps done before it.

Records are appended a whole line at a time; readers skip a line cut short by a crash, so a run that
is still going or that died mid-write can always be read. Only the standard library (and the one-line
user errors of engine.errors) is used here, so the report starts without torch or the model.
"""

import json
import os
from pathlib import Path

from engine.errors import UserError

RUNS_VARIABLE = "IRNSCOPE_RUNS"  # where run folders go and are looked up by name, when no --runs-dir says


def runs_root(given=None):
    """The folder of run folders: `given` (--runs-dir), else $IRNSCOPE_RUNS, else runs/ in the current folder."""
    return Path(given or os.environ.get(RUNS_VARIABLE) or "runs")


CONFIG = "config.json"
ENV = "env.jsonl"
METRICS = "metrics.jsonl"
PHASES_STEM = "phases"
SAMPLES_STEM = "gpu"
EXPLOSIONS = "explosions.jsonl"
CENSUS = "census.json"
LOG = "train.log"
FORECAST = "forecast.json"
TORCH_PROFILE = "torch_profile.json"
TORCH_TRACE = "torch_trace.json"
PYSPY_PREFIX = "pyspy"
CHECKPOINTS = "checkpoints"

# The phases of a training step, in the order they run; `other` is what the named phases leave of a
# loop iteration. Scheduled work runs between steps, now and then; it is timed apart from the step.
STEP_PHASES = ("data", "h2d", "forward", "codec", "loss", "backward", "optimizer", "logging", "other")
SCHEDULED_PHASES = ("validation", "checkpoint", "capture")
PHASES = STEP_PHASES + SCHEDULED_PHASES


def rank_file(folder, stem, rank, suffix=".jsonl"):
    """A per-rank record file: stem.jsonl for rank 0, stem.rankN.jsonl for the others."""
    return Path(folder) / (f"{stem}{suffix}" if rank == 0 else f"{stem}.rank{rank}{suffix}")


def rank_files(folder, stem, suffix=".jsonl"):
    """{rank: path} of every rank's stem.jsonl (or another `suffix`) that exists, in rank order."""
    folder = Path(folder)
    files = {0: folder / f"{stem}{suffix}"} if (folder / f"{stem}{suffix}").exists() else {}
    for path in folder.glob(f"{stem}.rank*{suffix}"):
        rank = path.name.removeprefix(f"{stem}.rank").removesuffix(suffix)
        if rank.isdigit():
            files[int(rank)] = path
    return dict(sorted(files.items()))


class JsonLines:
    """An append-only, line-buffered .jsonl file: a crash leaves only whole lines behind, but a line cut
    short by a crash mid-write is closed first, so the records appended after it stay readable."""

    def __init__(self, path):
        cut_short = _last_byte(path) not in (None, b"\n")
        self.file = open(path, "a", buffering=1)
        if cut_short:
            self.file.write("\n")

    def write(self, record):
        self.file.write(json.dumps(record) + "\n")

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _last_byte(path):
    """The last byte of a file, or None if it is missing or empty."""
    try:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1)
    except (FileNotFoundError, OSError):
        return None


class Tee:
    """A sink that hands each record to several writers (a JSONL file and its TensorBoard mirror, say)."""

    def __init__(self, *writers):
        self.writers = writers

    def write(self, record):
        for write in self.writers:
            write(record)


def read_jsonl(path):
    """Records of a .jsonl file, skipping lines cut short by a crash."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def write_json(path, obj):
    """Written aside and renamed, so a crash never leaves half a file."""
    path = Path(path)
    aside = path.with_name(path.name + ".tmp")
    aside.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(aside, path)


def read_config(folder):
    path = Path(folder) / CONFIG
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path} ({type(err).__name__}); the run folder is damaged") from None


def read_envs(folder):
    """One environment record per job that ran in this folder (a resumed run has several)."""
    return read_jsonl(Path(folder) / ENV)


def find(name_or_path, root=None):
    """A run folder given as a path or a name under the runs folder (runs_root); a UserError lists the runs that
    exist."""
    path, root = Path(name_or_path), runs_root(root)
    for candidate in (path, root / path):
        if (candidate / CONFIG).is_file():
            return candidate
    if path.is_dir():
        raise UserError(f"{path} is a folder but not a run folder (it has no {CONFIG}); give one such as runs/run_1")
    existing = sorted((p.name for p in root.glob("*") if (p / CONFIG).is_file()), key=_natural)
    listing = ", ".join(existing[-10:]) if existing else "none yet (train one with python -m engine.train)"
    raise UserError(f"no run folder {str(name_or_path)!r}; runs under {root}/: {listing}")


def _natural(name):
    """run_2 before run_10: numbers compared as numbers, each part keyed so that a number and a word compare."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in name.replace("_", " ").split()]
