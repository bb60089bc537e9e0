"""The data cache against decoding at every start, side by side on a generated set of DIV2K-size PNGs: the
start (cold: the first build; warm: the entries present), the training samples served per second, and
the peak resident memory of a demo run."""

import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from engine.data import cache, crops, image_files
from engine.errors import UserError
from profiling.bench.figures import REPO, Figures

SAMPLES_PER_ROUND = 400
ROUNDS = 5


def generated_image(job):
    """A photograph-like PNG: smooth colour fields, edges and a little noise (as incompressible as a
    photograph's fine detail, so decoding costs what a real one does)."""
    path, (w, h), seed = job
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    phases = rng.uniform(0, 6, 3).astype(np.float32)
    base = np.stack([np.sin(7 * x + phases[0]), np.cos(5 * y + phases[1]), np.sin(9 * (x + y) + phases[2])], -1)
    edges = (np.sin(40 * x * y + phases[0]) > 0.6)[..., None] * np.float32(0.2)
    img = 0.5 + 0.3 * base + edges + rng.normal(0, 0.04, (h, w, 3)).astype(np.float32)
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path, compress_level=6)


def generate(folder, count, size):
    folder.mkdir(parents=True)
    jobs = [(folder / f"{i:04d}.png", size, i) for i in range(count)]
    with multiprocessing.get_context("fork").Pool(len(os.sched_getaffinity(0))) as pool:
        pool.map(generated_image, jobs)
    return sum(p.stat().st_size for p in folder.iterdir())


def seconds(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def samples_per_second(sets, crop, scale):
    """{name: samples/s} of CropDataset over each set, samples 0 to (ROUNDS + 1) x SAMPLES_PER_ROUND: after a
    round that is not timed, rounds alternating between the sets and in which goes first; median. Each round
    draws new samples, so a cache's pages are mapped into the process as the crops first touch them."""
    datasets = {name: crops.CropDataset(s, crop, seed=0, scale=scale) for name, s in sets.items()}
    rates = {name: [] for name in sets}
    for r in range(-1, ROUNDS):
        order = list(datasets.items()) if r % 2 else list(datasets.items())[::-1]
        for name, ds in order:
            first = (r + 1) * SAMPLES_PER_ROUND
            took, _ = seconds(lambda ds=ds, first=first: [ds[i] for i in range(first, first + SAMPLES_PER_ROUND)])
            if r >= 0:
                rates[name].append(SAMPLES_PER_ROUND / took)
    return {name: statistics.median(r) for name, r in rates.items()}


def mapped_rss(folder):
    """Resident bytes of this process's mappings of the files under `folder` (/proc/self/smaps' Rss)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if not fields[0].endswith(":"):  # a mapping's first line: address, perms, offset, dev, inode, path
                inside = len(fields) > 5 and fields[5].startswith(str(folder))
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


# A small process between the bench and the run: a child's peak RSS starts from its parent's at fork (Linux
# keeps the parent's high-water mark across exec), so the run is started from this, not from the bench. It
# prints the run's peak RSS and its peak anonymous and shared memory (RssAnon + RssShmem, sampled every 10 ms: memory
# the kernel cannot drop, where the cache's mapped pages are clean page cache it reclaims under pressure).
STARTER = """
import resource, subprocess, sys, time
run, anonymous = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL), 0
while run.poll() is None:  # until this reaps it, an ended run is a zombie whose status still reads
    with open(f"/proc/{run.pid}/status") as f:
        kib = [int(line.split()[1]) for line in f if line.startswith(("RssAnon:", "RssShmem:"))]
    anonymous = max(anonymous, sum(kib))
    time.sleep(0.01)
sys.exit(run.returncode) if run.returncode else print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, anonymous)
"""


def peak_rss_of_run(data, data_cache, steps, workdir, scale):
    """(peak resident memory, peak anonymous and shared memory), in bytes, of `python -m engine.train --config demo` on
    `data` at `scale` (the bench's: at the demo's own, the run would build and map other entries than those
    measured)."""
    cmd = [sys.executable, "-m", "engine.train", "--config", "demo", "--data", str(data), "--steps", str(steps)]
    cmd += ["--scale", str(scale), "--data-cache", data_cache, "--checkpoint-every", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", STARTER, *cmd], cwd=workdir, env=env, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {run.stderr[-2000:]}")
    return tuple(int(kib) * 1024 for kib in run.stdout.split())  # KiB on Linux


def image_size(text, crop):
    """--image-size WxH as (w, h); a size that is not WxH, or smaller than the crop, is one line."""
    w, _, h = text.partition("x")
    if not (w.isdigit() and h.isdigit() and min(int(w), int(h)) >= crop):
        raise UserError(f"--image-size {text}: expected WxH, each at least the crop {crop}, like 2040x1356")
    return int(w), int(h)


def faster(before, after):
    return f"{before / after:.2f}x faster" if after <= before else f"{after / before:.2f}x slower"


def bench_data(args, device):
    """Decoding at every start vs the data cache, on `args.images` generated images, in one process."""
    w, h = image_size(args.image_size, args.crop)
    processes = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="irnscope-bench-data-") as tmp:
        tmp = Path(tmp)
        on_disk = generate(tmp / "hr", args.images, (w, h))
        today_s, decoded = seconds(
            lambda: image_files.read_folder(tmp / "hr", args.crop, crops.Decoded(args.scale).training)
        )
        entries = cache.Cache(tmp / "cache", args.scale, log=lambda line: None)
        cold_s, _ = seconds(lambda: image_files.read_folder(tmp / "hr", args.crop, entries.training))
        warm_s = min(
            seconds(lambda: image_files.read_folder(tmp / "hr", args.crop, entries.training))[0] for _ in range(3)
        )
        cached = image_files.read_folder(tmp / "hr", args.crop, entries.training)
        rates = samples_per_second({"memory": decoded, "cache": cached}, args.crop, args.scale)
        # the same samples again: every page they touch is mapped, as in a run that has crossed its set once
        again = samples_per_second({"memory": decoded, "cache": cached}, args.crop, args.scale)
        resident = {"memory": sum(a.nbytes for a in [*decoded.hrs, *decoded.lrs]), "cache": mapped_rss(tmp / "cache")}
        del decoded, cached
        rss_today, anon_today = peak_rss_of_run(tmp / "hr", "off", args.run_steps, tmp, args.scale)
        rss_cache, anon_cache = peak_rss_of_run(tmp / "hr", str(tmp / "cache"), args.run_steps, tmp, args.scale)
        (tmp / "one").mkdir()
        os.link(tmp / "hr" / "0000.png", tmp / "one" / "0000.png")  # the same file: its entries are found
        rss_floor, _ = peak_rss_of_run(tmp / "one", str(tmp / "cache"), args.run_steps, tmp, args.scale)
        cache_bytes = sum(p.stat().st_size for p in (tmp / "cache").rglob("*") if p.is_file())
    columns = ["", "decoded at every start", "data cache", "cache vs decoding"]
    result = Figures(f"data: {args.images} generated {w}x{h} PNGs at x{args.scale}, {processes} cores", columns)
    result.rows += [
        ["start, cold (s)", f"{today_s:.2f}", f"{cold_s:.2f}", faster(today_s, cold_s)],
        ["start, warm (s)", f"{today_s:.2f}", f"{warm_s:.3f}", faster(today_s, warm_s)],
        [f"samples/s ({args.crop}x{args.crop} crops)", f"{rates['memory']:.0f}", f"{rates['cache']:.0f}",
         f"{rates['cache'] / rates['memory']:.1%}"],
        ["samples/s, the same samples again", f"{again['memory']:.0f}", f"{again['cache']:.0f}",
         f"{again['cache'] / again['memory']:.1%}"],
        [f"data resident after {ROUNDS * SAMPLES_PER_ROUND} samples (MiB)", f"{resident['memory'] / 2**20:.0f}",
         f"{resident['cache'] / 2**20:.0f}", f"{resident['cache'] / resident['memory']:.1%}"],
        [f"peak RSS of a {args.run_steps}-step demo run (MiB)", f"{rss_today / 2**20:.0f}", f"{rss_cache / 2**20:.0f}",
         f"{rss_cache / rss_today:.1%}"],
        ["peak anonymous + shared memory of that run (MiB)", f"{anon_today / 2**20:.0f}", f"{anon_cache / 2**20:.0f}",
         f"{anon_cache / anon_today:.1%}"],
    ]  # fmt: skip
    result.notes += [
        f"the set: {on_disk / 2**20:.0f} MiB of PNGs, {cache_bytes / 2**20:.0f} MiB of cache entries (HR and LR "
        f"references); cold: read_folder + training_set in one process vs the cache's build in {processes} "
        "processes; warm: the entries present, best of 3",
        f"samples/s: CropDataset, median of {ROUNDS} rounds of {SAMPLES_PER_ROUND} after one untimed, alternating "
        "sets and which goes first; the cache's pages are in the page cache, as for every job after the first on "
        "a node, but each page a crop touches first is mapped into the process then; again: the same samples, "
        "their pages mapped; resident: the decoded arrays, or the Rss of the cache's mappings (/proc/self/smaps)",
        f"peak RSS: the run's ru_maxrss, python -m engine.train --config demo --data SET --scale {args.scale} "
        f"--steps {args.run_steps} --data-cache off (decoded in memory) or CACHE (the entries built above); the "
        f"same run on one of the images, from the cache: {rss_floor / 2**20:.0f} MiB, the run's floor without data; "
        "anonymous + shared: RssAnon + RssShmem of the run's process, sampled every 10 ms, the memory the kernel "
        "cannot reclaim (the cache's pages are clean page cache on a disk; on a tmpfs they would count here)",
    ]
    return result
