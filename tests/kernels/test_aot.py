"""The Triton kernels compiled ahead of time for real GPUs, without one (kernels/aot.py): each variant below
compiles, and none spills registers to local memory on the P100 (sm_60), the A100 (sm_80) or the H100 (sm_90).

The compiles run in a subprocess without TRITON_INTERPRET (this process has the interpreter's kernels),
in parallel processes, one per CPU; `pytest -s tests/kernels/test_aot.py` prints how many ran and their
CPU seconds (a cold Triton cache costs most of it; a warm one, seconds). What they cover:
- sm_80 and sm_90: every variant of the Haar and coupling kernels, and every kernel, dtype and tile set of
  the dense block: fp32 features (TF32 on and off) and fp16/bf16 ones. The convs read weights packed into
  the features' dtype, so fp32 weights (--precision runs the dense blocks under autocast, which keeps the
  parameters fp32) and half-precision ones (a model cast as a whole) differ in the packing alone. Of the
  dense variants that differ only in what the JIT specialises for IRN's channel counts, the one specialised
  most (`python -m profiling.bench registers` compiles every one).
- sm_60 (P100): the fp32 and fp16 Haar and coupling kernels (bf16 needs sm_80). The dense kernels start
  at compute capability 8.0 (kernels.dense.MIN_CAPABILITY): older GPUs keep cuDNN for the dense blocks.
"""

import functools
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import triton

ROOT = pathlib.Path(__file__).parents[2]
TARGETS = (60, 80, 90)
DENSE_DTYPES = ("fp32", "fp16", "bf16")
PACKED_DTYPES = (*DENSE_DTYPES, "fp16/w32", "bf16/w32")  # packed / weights, as kernels.aot.dtype names them


def compiled_here(variant, capability):
    """Whether the test compiles this variant (an aot.Variant) for this target (see the module docstring)."""
    from kernels import aot

    return aot.family(variant) in ("haar", "coupling") or variant.name in _most_specialised(capability)


@functools.cache
def _most_specialised(capability):
    """The names of the dense variants the test compiles for a target (none before sm_80): of those that differ
    only in what the JIT specialises (channel counts and strides 16-divisible or 1), the one specialised most,
    whose loads the JIT may widen to 16 bytes."""
    from kernels import aot

    if capability < 80:
        return frozenset()
    chosen = {}
    for v in aot.variants(capability):
        if aot.family(v).startswith("dense"):
            specialised = len(v.attrs) + sum(not arg.isupper() for arg in v.constexprs)
            key = aot.short_name(v)
            if key not in chosen or specialised > chosen[key][0]:
                chosen[key] = (specialised, v.name)
    return frozenset(name for _, name in chosen.values())


def _compile(targets=TARGETS):
    """In the subprocess: compile the test's variants, one JSON row per compile on stdout."""
    from kernels import aot

    for row in aot.compile_all(targets, select=compiled_here, loops=True):
        print(json.dumps(row))


@pytest.fixture(scope="module")
def rows():
    pytest.importorskip("triton.backends.nvidia", reason="the NVIDIA backend of Triton (Linux) compiles for GPUs")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-c", "from tests.kernels.test_aot import _compile; _compile()"]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    _report(rows)
    return rows


def _report(rows):
    """Registers per kernel family, dtype and target, and any spills (shown with pytest -s)."""
    print(f"\nAOT compiles: {len(rows)}, {sum(r.get('cpu_s', 0) for r in rows):.0f} CPU seconds")
    ranges = {}
    for r in rows:
        if "error" not in r:
            ranges.setdefault((r["target"], r["family"], r["dtype"]), []).append(r["registers"])
    for (target, family, dtype), registers in sorted(ranges.items()):
        print(f"  {target} {family:9} {dtype:8}: {min(registers)}-{max(registers)} registers")
    for r in rows:
        if r.get("spill_bytes"):
            print(f"  spills: {r['target']} {r['short']}: {r['spill_bytes']} bytes")


def _by_target(rows):
    found = {}
    for r in rows:
        found.setdefault(r["target"], []).append(r)
    return found


def test_every_variant_compiles(rows):
    failed = [f"{r['target']} {r['short']}: {r['error']}" for r in rows if "error" in r]
    assert not failed, "\n".join(failed)
    kinds = {target: {(r["family"], r["dtype"]) for r in found} for target, found in _by_target(rows).items()}
    stream = {(family, dtype) for family in ("haar", "coupling") for dtype in ("fp32", "fp16", "bf16")}
    dense = {(family, dtype) for family in ("dense_fwd", "dense_bwd") for dtype in DENSE_DTYPES}
    dense |= {("dense_pack", dtype) for dtype in PACKED_DTYPES}
    assert kinds == {
        "sm_60": {(family, dtype) for family, dtype in stream if dtype != "bf16"},
        "sm_80": stream | dense,
        "sm_90": stream | dense,
    }
    for target in ("sm_80", "sm_90"):  # both TF32 settings of the fp32 dense kernels
        convs = ("dense_fwd", "dense_bwd")
        fp32 = [r for r in rows if r["target"] == target and r["family"] in convs and r["dtype"] == "fp32"]
        precisions = {r["short"].split()[3] for r in fp32}
        assert {"tf32", "ieee"} <= precisions, (target, precisions)
    assert len({(r["target"], r["short"]) for r in rows}) == len(rows)  # short names tell variants apart


def test_no_variant_spills(rows):
    spills = [
        f"{r['target']} {r['short']}: {r['registers']} registers, {r['spill_bytes']} bytes spilled"
        for r in rows
        if r.get("spill_bytes")
    ]
    assert not spills, "\n".join(spills)


@pytest.mark.parametrize(
    "dtype, precision, tiles",
    [(torch.float32, "tf32", [32, 64]), (torch.float32, "ieee", [32]), (torch.bfloat16, "ieee", [32, 64])],
)
def test_fma_backward_steps_take_32_pixel_tiles(dtype, precision, tiles):
    """The configs a backward launch may take (launch_configs, which aot_variants compiles): FMA dots (fp32
    without TF32) only take 32-pixel tiles."""
    from kernels import dense

    configs = [triton.Config({"BLOCK_M": m}, num_warps=4, num_stages=3) for m in (32, 64)]
    pruned = dense._backward_configs(configs, dtype, precision)
    assert [config.kwargs["BLOCK_M"] for config in pruned] == tiles


# The global loads of the dense kernels' main loops, by jit function and pointer: the channel stride that
# makes them contiguous when it is 1, the channel count that masks them (16-divisible: a mask constant
# over 16 channels), and the tile's two dimensions.
MAIN_LOOP_LOADS = {
    ("_conv3x3_kernel", "src"): ("s_c", "C_in", ("BLOCK_M", "BLOCK_K")),  # the features' prefix
    ("_conv3x3_kernel", "packed"): ("p_n", None, ("BLOCK_K", "BLOCK_N")),
    ("_input_grad_tile", "grad"): ("g_c", "C_OUT", ("BLOCK_M", "BLOCK_K")),  # dZ (conv 5: the op's grad)
    ("_input_grad_tile", "packed"): ("p_n", None, ("BLOCK_K", "BLOCK_N")),
    ("_weight_grad_row_tile", "feat"): ("f_c", "C_in", ("BLOCK_P", "BLOCK_WC")),
    ("_weight_grad_row_tile", "grad"): ("g_c", "C_OUT", ("BLOCK_P", "BLOCK_WN")),
    ("_weight_grad_taps_tile", "feat"): ("f_c", "C_in", ("BLOCK_P", "BLOCK_WC")),
    ("_weight_grad_taps_tile", "grad"): ("g_c", "C_OUT", ("BLOCK_P", "BLOCK_WN")),  # gathered: fewer than 16
}
BYTES = {"*fp32": 4, "*fp16": 2, "*bf16": 2}
VECTOR_TILE = 128 * 16  # bytes: 4 warps' threads each loading 16


def _dense_convs(rows):
    return [r for r in rows if r["family"] in ("dense_fwd", "dense_bwd") and "error" not in r]


def expected_width(row, function, pointer):
    """16 where the JIT can prove a load contiguous, aligned and evenly masked over 16 bytes a thread and the
    tile gives every thread that much; None (any width) elsewhere: the op's grad as the caller lays it out
    (NCHW), or a tile too small (conv 5's 3 outputs padded to 16 in fp32)."""
    stride, count, dims = MAIN_LOOP_LOADS[(function, pointer)]
    c = row["constexprs"]
    even = count is None or count in row["divisible"] or c.get(count, 1) % 16 == 0  # an int the JIT saw, or a constexpr
    unit = c.get(stride) == 1 and even
    return 16 if unit and c[dims[0]] * c[dims[1]] * BYTES[row["pointers"][pointer]] >= VECTOR_TILE else None


def test_main_loops_load_features_dz_and_packed_weights_16_bytes_at_a_time(rows):
    """Read in the SASS: every global load of the main loops (feature, dZ and packed-weight tiles) is 16
    bytes wide wherever the JIT can make it so; and they load nothing else."""
    narrow = []
    for r in _dense_convs(rows):
        for loop in r["main_loops"]:
            for pointer, widths in loop["loads"].items():
                assert (loop["function"], pointer) in MAIN_LOOP_LOADS, (r["short"], loop["function"], pointer)
                if expected_width(r, loop["function"], pointer) == 16 and set(widths) != {16}:
                    narrow.append(f"{r['target']} {r['short']}: {loop['function']} {pointer} {sorted(set(widths))}")
    assert not narrow, "\n".join(narrow)


def test_the_dots_run_on_tensor_cores_of_each_generation(rows):
    """sm_90: wgmma for every dot of 64 rows or more (the forward and input-gradient tiles of 64 and 128
    pixels); sm_80: mma.sync; FMA loops only for fp32 without TF32."""
    rows_of_dot = {"_conv3x3_kernel": "BLOCK_M", "_input_grad_tile": "BLOCK_M"}
    rows_of_dot |= {"_weight_grad_row_tile": "BLOCK_WC", "_weight_grad_taps_tile": "BLOCK_WC"}
    wrong = []
    for r in _dense_convs(rows):
        c = r["constexprs"]
        for loop in r["main_loops"]:
            if c["PRECISION"] == "ieee" and r["dtype"] == "fp32":
                expected = "fma"
            elif r["target"] == "sm_90" and c[rows_of_dot[loop["function"]]] >= 64:
                expected = "wgmma"
            else:
                expected = "mma.sync"
            if loop["mma"] != expected:
                wrong.append(f"{r['target']} {r['short']}: {loop['function']} {loop['mma']}, not {expected}")
    assert not wrong, "\n".join(wrong)
