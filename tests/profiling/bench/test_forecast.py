"""The forecast's model (profiling/bench/forecast.py) on figures worked out by hand: issue time, residency, and
the instructions a program executes on a SASS listing (tests/kernels/test_sass.py's)."""

import json

import pytest

from profiling.bench import forecast
from profiling.bench.__main__ import main as bench_main
from profiling.bench.forecast import Chip
from tests.kernels.test_sass import listing

CHIP = Chip("H100", sms=2, clock_ghz=1.0, shared_per_sm=100 * 1024)


def test_issue_time_is_the_larger_of_the_whole_launch_and_its_longest_program():
    # 8 programs x 4 warps x 1,000 instructions over 2 SMs x 4 schedulers x 1,000 clocks per us
    assert forecast.issue_us(CHIP, [(8, 1000)]) == 4.0
    # one program of 10,000 instructions per warp issues one per clock at best: 10 us, not 40,000 / 8,000
    assert forecast.issue_us(CHIP, [(1, 10_000), (0, 10**9)]) == 10.0


def test_resident_ctas_follow_registers_shared_memory_and_threads():
    assert forecast.resident_ctas(CHIP, registers=128, shared=0) == 4  # 65,536 / (128 x 128 threads)
    assert forecast.resident_ctas(CHIP, registers=130, shared=0) == 3  # 136 per thread, allocated in 256s a warp
    assert forecast.resident_ctas(CHIP, registers=32, shared=40 * 1024) == 2  # 100 KB / (40 KB + 1 KB reserved)
    assert forecast.resident_ctas(CHIP, registers=16, shared=0) == 16  # 2,048 threads / 128


def test_a_program_executes_its_straight_line_code_once_and_each_loop_per_trip(tmp_path):
    """The listing: 4 straight-line instructions, an outer loop of 4 of its own (one HGMMA, one FFMA: 4 warps x
    (2,048 + 32) multiply-accumulates per trip) around an inner one of 4 (one HMMA: 4 x 512 per trip)."""
    read, _ = listing(tmp_path)
    outer, inner = (3, 32768 + 128), 8192  # (trips, multiply-accumulates per trip)
    assert forecast.executed(read, {"outer": outer, "inner": (12, inner)}) == 4 + 3 * 4 + 12 * 4
    # a source trip of half the SASS trip's multiplies: the compiler unrolled the loop by 2, so 6 SASS trips
    assert forecast.executed(read, {"outer": outer, "inner": (12, inner // 2)}) == 4 + 3 * 4 + 6 * 4
    assert forecast.executed(read, {"outer": outer, "inner": (0, 0)}) == 4 + 3 * 4
    wide = forecast.executed(read, {"outer": outer, "inner": (12, inner)}, forecast._is_wide_load)
    assert wide == 3 * 1 + 12 * 1  # the outer loop's LDG.E.128, the inner's LDGSTS.128


STEP = {"config": "irn_x4", "target": "sm_90", "gpu": "H100", "precision": "bf16", "issue_ms": 12.5,
        "compute_ms": 2.0, "memory_ms": 9.0, "launch_ms": 1.0, "bound": "issue", "loads_16b_compiled": 0.5,
        "loads_16b_executed": 0.75}  # fmt: skip


@pytest.fixture
def stand_in(monkeypatch):
    """forecast.forecast replaced by one that notes the config it is given and returns one step: the command's
    plumbing without its minutes of compiling."""
    given = []
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(
        forecast, "forecast", lambda cfg, dump_to=None: given.append(cfg) or {"steps": [STEP], "launches": []}
    )
    return given


def test_the_forecast_command_prints_its_json_and_exits_cleanly(stand_in, capsys):
    bench_main(["forecast", "--json"])
    assert json.loads(capsys.readouterr().out) == {"steps": [STEP], "launches": []}
    assert stand_in[0].config == "irn_x4"
    bench_main(["forecast"])
    table = capsys.readouterr().out
    assert "H100 (sm_90)" in table and "50% / 75%" in table and "12.5" in table


def test_the_forecast_of_a_run_is_written_into_its_folder_for_one_rank(stand_in, tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"config": "irn_x4", "batch_size": 16}))
    (tmp_path / "env.jsonl").write_text(json.dumps({"world_size": 2}) + "\n")
    bench_main(["forecast", "--run", str(tmp_path), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "forecast.json").read_text()) == {"steps": [STEP], "launches": []}
    assert stand_in[0].batch_size == 8  # one rank's share of the batch of 16
