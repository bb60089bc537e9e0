"""profiling/bench/data.py's memory runs: the demo run it measures reads the set at the bench's scale."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from profiling.bench import data


def test_the_demo_runs_measured_train_at_the_bench_s_scale(tmp_path, monkeypatch):
    started = []

    def recorded(cmd, **kwargs):
        started.append(cmd)
        return SimpleNamespace(returncode=0, stdout="1 1\n", stderr="")

    monkeypatch.setattr(subprocess, "run", recorded)
    data.peak_rss_of_run(tmp_path, "off", 3, tmp_path, scale=2)
    train = started[0][started[0].index("engine.train") :]
    assert train[train.index("--scale") + 1] == "2"


def filesystem(path):
    """The type of the filesystem holding `path` (/proc/self/mounts: the deepest mount point above it)."""
    with open("/proc/self/mounts") as mounts:
        found = [line.split()[1:3] for line in mounts]
    path = os.path.realpath(path)
    above = [(point, kind) for point, kind in found if os.path.commonpath([point, path]) == point]
    return max(above, key=lambda mount: len(mount[0]))[1]


def test_the_starter_sees_a_run_s_anonymous_memory_and_not_a_file_it_maps(tmp_path):
    """A run that fills 200 MiB of its own and maps a 200 MiB file it reads: both are resident at its peak,
    only the first is anonymous (a file on a tmpfs would be shared memory, which the starter counts)."""
    if filesystem(tmp_path) == "tmpfs":
        pytest.skip(f"{tmp_path} is on a tmpfs, whose mapped pages count as shared memory")
    mapped = tmp_path / "mapped"
    mapped.write_bytes(bytes(200 * 2**20))
    run = (
        "import mmap, time; f = open(r'%s', 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); "
        "sum(m[i] for i in range(0, len(m), 4096)); a = bytearray(len(m)); a[::4096] = b'1' * (len(m) // 4096); "
        "time.sleep(0.5)" % mapped
    )
    starter = [sys.executable, "-c", data.STARTER, sys.executable, "-c", run]
    out = subprocess.run(starter, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    peak, anonymous = (int(kib) / 1024 for kib in out.stdout.split())
    assert 200 <= anonymous < 300 and peak >= anonymous + 200
