"""profiling/bench/data.py's memory runs: the demo run it measures reads the set at the bench's scale."""

import subprocess
from types import SimpleNamespace

from profiling.bench import data


def test_the_demo_runs_measured_train_at_the_bench_s_scale(tmp_path, monkeypatch):
    started = []

    def recorded(cmd, **kwargs):
        started.append(cmd)
        return SimpleNamespace(returncode=0, stdout="1\n", stderr="")

    monkeypatch.setattr(subprocess, "run", recorded)
    data.peak_rss_of_run(tmp_path, "off", 3, tmp_path, scale=2)
    train = started[0][started[0].index("engine.train") :]
    assert train[train.index("--scale") + 1] == "2"
