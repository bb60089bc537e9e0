"""The benches' plumbing on a CPU, at a tiny shape: what they measure, not how fast it is."""

import argparse
import re

import pytest
import torch

from profiling.bench import data
from profiling.bench.__main__ import main as bench_main
from profiling.bench.memory import bench_memory
from profiling.bench.step import bench_step

TINY = dict(scale=2, batch=1, crop=16, steps=1, warmup=0, rounds=1, variants="freia", json=False)


def test_the_memory_bench_shows_what_inversion_saves():
    result = bench_memory(argparse.Namespace(**TINY), torch.device("cpu"))
    standard, inverted, ratio = result.rows
    assert standard[0] == "standard" and inverted[0] == "by inversion"
    assert float(ratio[1].rstrip("%")) < 40  # activations saved for the backward
    assert float(inverted[2]) > 0 and float(standard[3]) > 0
    errors = re.search(r"HR -> LR (\S+), LR, z -> HR (\S+)$", result.notes[-1]).groups()
    assert all(0 <= float(error) < 1e-4 for error in errors)  # fp32 rounding, at near-initial weights


def test_the_step_bench_sets_mfu_and_the_census_beside_the_time():
    result = bench_step(argparse.Namespace(**TINY), torch.device("cpu"))
    (row,) = result.rows
    assert row[0] == "freia" and float(row[1]) > 0 and row[3] == "1.00x"
    assert 0 < float(row[5].rstrip("%")) < 100 and int(row[7].replace(",", "")) > 0
    markdown = result.markdown()
    assert markdown.startswith("### training step at x2") and "| freia |" in markdown


@pytest.mark.parametrize(
    "args, message",
    [
        (["step", "--steps", "0"], "argument --steps: '0': expected an integer >= 1"),
        (["step", "--warmup", "-1"], "argument --warmup: '-1': expected an integer >= 0"),
        (["overhead", "--rounds", "0"], "argument --rounds: '0': expected an integer >= 1"),
        (["step", "--scale", "5"], "argument --scale: '5': expected a power of two"),
        (["step", "--crop", "30"], "--crop 30: expected a multiple of the scale 4"),
        (["gpu", "--json"], "`bench gpu` writes its figures into --out"),
        (["step", "--variants", "fastest"], "unknown variant 'fastest'"),
        (["data", "--image-size", "big"], "--image-size big: expected WxH, each at least the crop"),
        (
            ["data", "--image-size", "2040x8", "--crop", "32"],
            "--image-size 2040x8: expected WxH, each at least the crop 32",
        ),
    ],
)
def test_bad_bench_flags_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err


def test_the_data_bench_sets_the_cache_beside_decoding_at_every_start(monkeypatch):
    runs = []

    def peak(*args):  # the runs' (peak, anonymous peak): 1 GiB and 512 MiB, then halves
        runs.append(args[1])
        return 2**30 / len(runs), 2**29 / len(runs)

    monkeypatch.setattr(data, "peak_rss_of_run", peak)
    args = argparse.Namespace(**{**TINY, "crop": 32, "scale": 4}, images=3, image_size="96x72", run_steps=1)
    result = data.bench_data(args, torch.device("cpu"))
    assert [row[0] for row in result.rows] == [
        "start, cold (s)", "start, warm (s)", "samples/s (32x32 crops)", "samples/s, the same samples again",
        "data resident after 2000 samples (MiB)", "peak RSS of a 1-step demo run (MiB)",
        "peak anonymous + shared memory of that run (MiB)",
    ]  # fmt: skip
    assert all(float(v) >= 0 for row in result.rows for v in row[1:3])
    assert runs[0] == "off" and runs[1].endswith("cache") and result.rows[-2][1:] == ["1024", "512", "50.0%"]
    assert result.rows[-1][1:] == ["512", "256", "50.0%"]
