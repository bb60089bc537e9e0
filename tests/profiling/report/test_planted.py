"""The report proven on planted bottlenecks: the same short CPU run with one part of the loop slowed from outside
the code under test (a wrapper that sleeps), and the report must name that part.

A plant sleeps PLANT x the unplanted run's step each time the part runs, and measures how long it slept and when
(time.monotonic, the clock the phase records stamp each step's end with). The planted part's mean time in the
report's steady steps must then be its unplanted mean plus the sleep measured in those steps, within 10% of the
step (10 points of its share), be the largest share, and the verdict must point at it with a next step that fits.
Taking the sleep as measured, not as asked, and comparing times, not shares against the unplanted step, keeps a
loaded machine's slower or faster steps out of the expectation. Where the run itself was starved of CPU (a
machine shared with other work), the report must say so, and the test is skipped.
"""

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import train
from engine.data import crops
from engine.training import checkpoints, loop, progress, step
from profiling.records import read_jsonl
from profiling.report.analysis import WARMUP_STEPS, analyse
from profiling.report.verdict import STARVED, STARVED_WAITING
from tests.conftest import TINY

PLANT = 4.0
STEPS = ["--steps", "12", "--workers", "0"]


def run(image_folder, name, *args):
    train.main([*TINY, "--data", str(image_folder), "--name", name, *STEPS, *args])
    return analyse(Path("runs") / name)


@pytest.fixture(scope="module")
def unplanted(tmp_path_factory):
    """The unplanted run (in a folder of its own) and its image folder: what every plant is measured against."""
    root = tmp_path_factory.mktemp("planted")
    import numpy as np
    from PIL import Image

    from tests.conftest import smooth_image

    rng = np.random.default_rng(0)
    (root / "hr").mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(rng, 40 + 8 * i, 48)).save(root / "hr" / f"img{i}.png")
    old = os.getcwd()
    os.chdir(root)
    try:
        analysis = run(root / "hr", "unplanted")
    finally:
        os.chdir(old)
    return root, analysis


def starved(analysis):
    """Whether the run's threads waited for a core as long as the report's rule calls starved."""
    waiting, running = analysis["gpu"].get("waiting_percent_mean"), analysis["gpu"].get("cpu_percent_mean")
    return waiting is not None and waiting >= max(STARVED * running, STARVED_WAITING)


def sleeping(real, seconds, slept):
    """`real`, slowed by a sleep of `seconds` before each call; `slept` gets (the sleep's midpoint, its seconds, the
    seconds of the whole call: the sleep and the real work)."""

    def planted(*args, **kwargs):
        began = time.monotonic()
        time.sleep(seconds)
        woke = time.monotonic()
        try:
            return real(*args, **kwargs)
        finally:
            slept.append(((began + woke) / 2, woke - began, time.monotonic() - began))

    return planted


def slept_per_step(folder, slept):
    """{step: seconds slept in it} of a run's steady steps (the first WARMUP_STEPS warm up), from each step's end
    and wall time in phases.jsonl. A sleep counts in the step its midpoint falls in: far from either end of it,
    where the records' clock (rounded to the millisecond) cannot misplace it."""
    steps = {r["step"]: r for r in read_jsonl(Path(folder) / "phases.jsonl") if r["step"] > WARMUP_STEPS}
    return {
        step: sum(s for middle, s, _ in slept if r["clock"] - r["wall_ms"] / 1e3 < middle <= r["clock"])
        for step, r in steps.items()
    }


def skip_if_starved(analysis):
    if starved(analysis):
        assert analysis["verdict"]["label"] == "CPU-starved"
        pytest.skip("the machine starved the run of CPU (the report said so): a plant's share cannot be judged")


STEP_PLANTS = {  # the phase a plant slows: (where the sleep goes, how many times per step it runs, the verdict, next)
    "data": ((crops.CropDataset, "__getitem__"), 2, "data-bound", "raise --workers"),  # each of the batch's samples
    "forward": ((step, "network_passes"), 1, "far from every floor", "which of the forward's ops"),
    "backward": ((step.torch.Tensor, "backward"), 1, "far from every floor", "which of the backward's ops"),
    "optimizer": ((step.Trainer, "update"), 1, "optimizer-bound", "--torch-profile"),
    "loss": ((step, "irn_losses"), 1, "loss-bound", "--torch-profile"),
    "logging": ((progress.TrainingProgress, "update"), 1, "logging-bound", "faster, local disk"),
    # where the host reads the step's values: a sync
    "other": ((step.Trainer, "outcome"), 1, "overhead-bound", "--py-spy START:STOP"),
}


@pytest.mark.parametrize("phase", list(STEP_PLANTS))
def test_a_slowed_phase_of_the_step_is_named(phase, unplanted, monkeypatch):
    root, normal = unplanted
    monkeypatch.chdir(root)
    (owner, name), calls, label, next_step = STEP_PLANTS[phase]
    slept = []
    sleep_s = PLANT * normal["phases"]["step_ms"] / calls / 1e3
    monkeypatch.setattr(owner, name, sleeping(getattr(owner, name), sleep_s, slept))
    analysis = run(root / "hr", f"slow-{phase}")
    monkeypatch.undo()
    skip_if_starved(analysis)
    verdict, phases = analysis["verdict"], analysis["phases"]
    shares = {p: row["share"] for p, row in phases["phases"].items()}
    slept_ms = 1e3 * statistics.mean(slept_per_step(root / "runs" / f"slow-{phase}", slept).values())
    expected = (normal["phases"]["phases"][phase]["mean_ms"] + slept_ms) / phases["step_ms"]
    said = (shares, expected, verdict)  # what a failure shows: a timing test's evidence
    assert max(shares, key=shares.get) == phase and shares[phase] == pytest.approx(expected, abs=0.10), said
    assert verdict["label"] == label and verdict["phase"] == phase, verdict
    assert next_step in verdict["next"], verdict


@pytest.mark.parametrize("work", ["validation", "checkpoint"])
def test_slow_scheduled_work_is_named_with_its_share_of_the_wall_time(work, unplanted, monkeypatch):
    """A validation or checkpoint every 2 steps, each slowed by 2 x PLANT steps: the report's time for that work
    is that of the slowed calls as the plant measured them (the sleep and the real work), within 10% of the wall
    time, and over the share that names it."""
    root, normal = unplanted
    monkeypatch.chdir(root)
    owner, name = {"validation": (loop, "validate"), "checkpoint": (checkpoints, "save")}[work]
    slept = []
    monkeypatch.setattr(
        owner, name, sleeping(getattr(owner, name), 2 * PLANT * normal["phases"]["step_ms"] / 1e3, slept)
    )
    every = {"validation": ["--val", str(root / "hr"), "--val-every", "2"], "checkpoint": ["--checkpoint-every", "2"]}
    analysis = run(root / "hr", f"slow-{work}", *every[work])
    monkeypatch.undo()
    skip_if_starved(analysis)
    wall_s = sum(r["wall_ms"] for r in read_jsonl(root / "runs" / f"slow-{work}" / "phases.jsonl")) / 1e3
    scheduled = analysis["scheduled"][work]
    called_s = sum(call for *_, call in slept)
    assert scheduled["total_s"] == pytest.approx(called_s, abs=0.10 * wall_s), (scheduled, slept)
    assert analysis["verdict"]["label"] == f"{work}-heavy" and analysis["verdict"]["phase"] == work
    assert f"{work} took {scheduled['share']:.0%} of the wall time" in analysis["verdict"]["evidence"]


def test_the_unplanted_run_is_judged_against_the_floors(unplanted):
    root, normal = unplanted
    skip_if_starved(normal)
    assert normal["verdict"]["rule"].startswith("7 ") and normal["verdict"]["label"] in (
        "far from every floor", "compute-bound", "launch-bound", "memory-bound",
    )  # fmt: skip


def test_a_run_sharing_its_core_with_busy_processes_is_named_cpu_starved(unplanted, monkeypatch):
    """Real starvation: the trainer and two busy loops pinned to one core, which the kernel shares among them."""
    root, _ = unplanted
    monkeypatch.chdir(root)
    core = min(os.sched_getaffinity(0))
    busy = [
        subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"])
        for _ in range(2)
    ]
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {core})
        analysis = run(root / "hr", "starved")
    finally:
        os.sched_setaffinity(0, before)
        for proc in busy:
            proc.kill()
    assert starved(analysis) and analysis["verdict"]["label"] == "CPU-starved"


def test_a_run_too_short_for_steady_steps_says_so(unplanted, monkeypatch):
    root, _ = unplanted
    monkeypatch.chdir(root)
    train.main([*TINY, "--data", str(root / "hr"), "--name", "short", "--steps", "4"])
    verdict = analyse(Path("runs/short"))["verdict"]
    assert verdict["label"] == "too short to judge" and "0 steady steps" in verdict["evidence"]


SLOW_RANK_1 = """
import os, time
from engine import train
from engine.data import crops
if os.environ["RANK"] == "1":  # one rank's loader slowed: a straggler the other waits for in the all-reduce
    real = crops.CropDataset.__getitem__
    def slow(self, index):
        time.sleep(float(os.environ["PLANTED_S"]))
        return real(self, index)
    crops.CropDataset.__getitem__ = slow
train.main()
"""


def test_one_slow_rank_of_two_is_flagged_as_the_straggler(unplanted, tmp_path):
    root, normal = unplanted
    script = tmp_path / "slow_rank.py"
    script.write_text(SLOW_RANK_1)
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    env["PLANTED_S"] = str(PLANT * normal["phases"]["step_ms"] / 1e3)  # per sample: each rank has one of the two
    args = [*TINY, "--data", str(root / "hr"), "--name", "straggler", *STEPS]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *args]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    analysis = analyse(tmp_path / "runs" / "straggler")
    flagged = [r["rank"] for r in analysis["ranks"] if r["straggler"]]
    assert flagged == [1] and analysis["verdict"]["label"] == "straggler"
    work = {r["rank"]: r["work_ms"] for r in analysis["ranks"]}
    median = statistics.mean(work.values())  # of two ranks
    said = f"rank 1's work before the all-reduce takes {work[1]:.1f} ms, {work[1] / median:.1f}x the median rank's"
    assert said in analysis["verdict"]["evidence"] and work[1] / median > 1.1
