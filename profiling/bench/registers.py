"""Registers per thread and spilled bytes of every Triton kernel variant, compiled ahead of time for each target
GPU: no GPU needed."""

import os

from engine.errors import UserError
from profiling.bench.figures import Figures


def bench_registers(args, device):
    """Registers per thread and spilled bytes of every kernel variant, compiled ahead of time for each target
    GPU (no GPU needed): one row per variant, one column per target."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise UserError("ahead-of-time compiles need the real Triton compiler: unset TRITON_INTERPRET")
    from kernels import aot

    rows = aot.compile_all()
    targets = sorted({r["target"] for r in rows}, key=lambda t: int(t[3:]))
    cells = {}
    for r in rows:
        cell = "error" if "error" in r else f"{r['registers']}/{r['spill_bytes']}"
        cells.setdefault(r["short"], {})[r["target"]] = cell
    columns = ["kernel variant"] + [f"{t} {aot.TARGETS.get(int(t[3:]), '')}" for t in targets]
    result = Figures(
        "Triton kernels compiled ahead of time: registers per thread / spilled bytes", columns, records=rows
    )
    order = {v.short: i for i, v in enumerate(aot.variants())}
    for short in sorted(cells, key=lambda name: order.get(name, len(order))):
        result.rows.append([short, *(cells[short].get(t, "-") for t in targets)])
    result.notes.append("M N K P WN WC: BLOCK_M ... BLOCK_WC; /w32: fp32 weights (autocast); +16:arg: arg 16-divisible")
    for target in targets:
        done = [r for r in rows if r["target"] == target]
        spilling, failed = sum(1 for r in done if r.get("spill_bytes")), [r for r in done if "error" in r]
        result.notes.append(f"{target}: {len(done)} variants, {spilling} spilling, {len(failed)} failing to compile")
        result.notes += [f"{r['short']}: {r['error']}" for r in failed]
    return result
