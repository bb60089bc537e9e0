"""The forecast's model (profiling/bench/forecast.py) on figures worked out by hand: issue time, residency, and
the instructions a program executes on a SASS listing (tests/kernels/test_sass.py's)."""

from profiling.bench import forecast
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
