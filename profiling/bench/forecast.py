"""How fast the fused dense blocks can run on an A100 and an H100 at a config's training shapes, read from their
compiled code: no GPU needed.

    python -m profiling.bench forecast [--config irn_x4 | --run RUN] [--json] [--dump DIR]

Every launch the dense-block ops make in one training step of the config (the op calls of the step's census
on fake tensors, engine/training/step_census.py), in TF32 and in bf16, is compiled ahead of time for sm_80
and sm_90 as the JIT compiles it (kernels/aot.py: dtypes, alignment, unit strides, each tile config the
launch may take), and its SASS is read (kernels/sass.py). The model, per launch:

    instructions = sum over programs of warps x (straight-line instructions + sum over loops of trips x loop)
    issue_us     = max(instructions / (4 schedulers x SMs x clock), the longest program's per warp / clock)

An SM issues at most one warp instruction per clock from each of its 4 schedulers, so no launch runs faster
than this whatever its latencies: the issue time is a lower bound. A loop's trips are the launch's own
(kernels/dense.py Launch.work), divided by the source trips one SASS trip does (the multiply-accumulates of
a SASS trip over those of a source trip: 1 unless the compiler unrolled the loop); straight-line code counts
once per program, less the functions its programs never enter. Each launch takes the config the model finds
fastest (the start-up tuning measures, and may choose otherwise). The model leaves out latencies (memory,
tensor cores, barriers: a waiting warp issues nothing), cache misses, shared-memory bank conflicts, partial waves
and tails, launch costs, and every kernel besides the dense blocks' (Haar, coupling, optimiser, losses: the
DRAM floor counts their bytes). Beside it, per step, the compute, DRAM and launch floors of the whole step's
census (profiling/report/roofline.py); a step is no faster than the largest of the four.

Per launch it reports the grid, CTAs per SM (registers, shared memory, threads), waves, each loop's
instructions per trip and trips, the widths of its global loads and its multiply kind (wgmma, mma.sync or
FMA); per step, the share of 16-byte global loads (a thread's whole vector), of the load instructions in the
compiled variants and of those executed.
"""

import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from engine.errors import UserError
from engine.training import config
from engine.training.step_census import census_json, dense_block_calls
from profiling import records
from profiling.bench.figures import Figures
from profiling.report import roofline

# the dense blocks' precisions: fp32 convs take TF32 (PyTorch's default, --tf32 true), or bf16 throughout
PRECISIONS = {"tf32": {"precision": "fp32", "tf32": True}, "bf16": {"precision": "bf16"}}
WARPS = 4  # every dense-kernel config has 4 warps (kernels/dense.py)


@dataclass(frozen=True)
class Chip:
    """What bounds instruction issue and residency on a GPU: the vendor's figures, at the boost clock."""

    gpu: str  # its roofline.GPUS key
    sms: int
    clock_ghz: float
    shared_per_sm: int  # bytes
    registers_per_sm: int = 65536
    threads_per_sm: int = 2048
    ctas_per_sm: int = 32
    schedulers: int = 4  # warp instructions issued per clock per SM


CHIPS = {80: Chip("A100", 108, 1.41, 164 * 1024), 90: Chip("H100", 132, 1.98, 228 * 1024)}


def resident_ctas(chip, registers, shared):
    """CTAs of 4 warps one SM holds at once: threads, registers (allocated per warp in 256s) and shared memory
    (1 KB reserved per CTA) each bound it."""
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    bounds = (chip.threads_per_sm // (32 * WARPS), chip.registers_per_sm // (per_warp * WARPS))
    return max(0, min(chip.ctas_per_sm, *bounds, chip.shared_per_sm // (shared + 1024)))


def executed(listing, loops, counted=lambda ins: True):
    """Instructions one warp of a program executes that `counted` selects, on a kernels.sass.Listing, for a
    program group's loops {function: (trips, multiply-accumulates per trip per CTA)}: straight-line code once,
    less the functions it never enters (0 trips), and each loop's instructions times its SASS trips."""
    from kernels import sass

    skipped = {function for function, (trips, _) in loops.items() if trips == 0}
    total = sum(1 for ins in listing.straight_line if counted(ins) and not sass.functions_of(ins) & skipped)
    for loop in listing.loops:
        total += sass_trips(loop, loops) * sum(1 for ins in loop.own if counted(ins))
    return total


def sass_trips(loop, loops):
    """Trips of a SASS loop: its source loop's, over the source trips one SASS trip does (unrolling)."""
    from kernels import sass

    trips, macs = loops.get(loop.function, (1, 0))
    per_trip = WARPS * sum(sass.macs_per_warp(ins) for ins in loop.own)
    return trips * macs / per_trip if macs and per_trip else trips


def issue_us(chip, groups):
    """The issue-bound time of a launch whose program groups are [(programs, instructions per warp)]."""
    clocks_per_us = chip.clock_ghz * 1e3
    total = sum(programs * WARPS * per_warp for programs, per_warp in groups)
    longest = max((per_warp for programs, per_warp in groups if programs), default=0)
    return max(total / (chip.schedulers * chip.sms * clocks_per_us), longest / clocks_per_us)


# --- the launches of a step, compiled -----------------------------------------------------------------


def step_launches(cfg, precision):
    """(the step's config, every dense-kernel launch of one fused training step of it in `precision`), on meta
    tensors."""
    from kernels import dense

    run_cfg = replace(cfg, fast_kernels=True, **PRECISIONS[precision])
    tf32 = PRECISIONS[precision].get("tf32", False)
    calls = dense_block_calls(run_cfg)
    return run_cfg, [launch for op, args in calls for launch in dense.call_launches(op, args, tf32)]


def choices(launch):
    """[(tile config, kernels.aot.Variant)] of the configs a launch may take (kernels.dense.launch_configs)."""
    from kernels import aot, dense

    found = []
    for config_ in dense.launch_configs(launch):
        name, *compile_args = dense.launch_variant(launch, config_)
        variant = aot.Variant(name, "", *compile_args)
        found.append((config_, variant._replace(short=aot.short_name(variant))))
    return found


def compiled(variants, capability, workers):
    """{variant name: its compiled code (kernels.aot.compiled_code) with the SASS read}, each variant once."""
    from kernels import aot, sass

    unique = list({v.name: v for v in variants}.values())
    codes = aot.compile_code(unique, capability, workers)
    return {v.name: code | {"listing": sass.read(code["sass"])} for v, code in zip(unique, codes, strict=True)}


def dump(code, variants, capability, folder):
    """Each variant's TTGIR, PTX and SASS under folder/sm_XX/, named by its short name and a digest of its name."""
    target = Path(folder) / f"sm_{capability}"
    target.mkdir(parents=True, exist_ok=True)
    for v in {v.name: v for v in variants}.values():
        stem = re.sub(r"[^A-Za-z0-9.+-]+", "_", v.short) + "_" + hashlib.sha1(v.name.encode()).hexdigest()[:6]
        for stage in ("ttgir", "ptx", "sass"):
            (target / f"{stem}.{stage}").write_text(code[v.name][stage])


# --- per launch and per step ------------------------------------------------------------------------


def launch_forecast(launch, options, code, chip):
    """The forecast of one launch under the config the model finds fastest, with what its compiled code says."""
    return min((_under(launch, config_, variant, code[variant.name], chip) for config_, variant in options),
               key=lambda row: row["issue_us"])  # fmt: skip


def _under(launch, config_, variant, code, chip):
    from kernels import sass

    listing = code["listing"]
    groups = [(programs, loops) for programs, loops in launch.work(launch.constexprs | config_.kwargs) if programs]
    programs = sum(p for p, _ in groups)
    per_warp = [(p, executed(listing, loops)) for p, loops in groups]
    ctas = resident_ctas(chip, code["registers"], code["shared_bytes"])

    def over_programs(counted):
        return sum(p * WARPS * executed(listing, loops, counted) for p, loops in groups)

    return {
        "kernel": variant.short,
        "variant": variant.name,
        "shape": _shape(launch),
        "programs": programs,
        "registers": code["registers"],
        "shared_bytes": code["shared_bytes"],
        "ctas_per_sm": ctas,
        "waves": round(programs / (ctas * chip.sms), 2) if ctas else None,
        "mma": sass.mma_kind(listing.instructions),
        "loops": [_loop_row(loop, groups) for loop in listing.loops if sass.mma_kind(loop.own)],
        "loads": over_programs(_is_load),
        "loads_16b": over_programs(_is_wide_load),
        "groups": [
            {"loops": [f for f, (trips, _) in loops.items() if trips], "programs": p, "instructions_per_warp": round(n)}
            for (p, loops), (_, n) in zip(groups, per_warp, strict=True)
        ],
        "issue_us": issue_us(chip, per_warp),
    }


def _shape(launch):
    """Pixels (a block's), input and output channels of a conv's launch, and its blocks (2: a coupling's H and G
    in one launch); none for the packing."""
    if launch.kernel.__name__ == "_pack_kernel":
        return {}
    named = dict(zip(launch.kernel.arg_names, launch.args, strict=False)) | launch.constexprs
    named.setdefault("C_out", named.get("C_OUT"))  # a constexpr in the backward
    shape = {key: named[key] for key in ("n_pixels", "C_in", "C_out") if key in named and named[key] is not None}
    return shape | {"blocks": named["packed"].shape[0]}


def _is_load(ins):
    from kernels import sass

    return sass.load_bytes(ins) is not None


def _is_wide_load(ins):
    from kernels import sass

    return sass.load_bytes(ins) == 16


def _loop_row(loop, groups):
    """A main loop (one that multiplies): instructions per trip, trips, its global loads by width, multiply kind."""
    from kernels import sass

    widths = {}
    for width in filter(None, map(sass.load_bytes, loop.own)):
        widths[f"{width}B"] = widths.get(f"{width}B", 0) + 1
    return {
        "function": loop.function,
        "instructions": len(loop.own),
        "trips": round(max(sass_trips(loop, loops) for _, loops in groups), 2),
        "loads": widths,
        "mma": sass.mma_kind(loop.own),
    }


def step_forecast(cfg, precision, capability, rows, census, code):
    """The step's issue-bound time on one GPU beside its census's floors there, and its share of 16-byte loads."""
    from kernels import sass

    chip, run = CHIPS[capability], PRECISIONS[precision]
    gpu = roofline.GPUS[chip.gpu]
    floors = roofline.floors(roofline.on_gpu(census, gpu), gpu, run["precision"], run.get("tf32", False))
    bounds = {"issue": sum(row["issue_us"] for row in rows) / 1e3}
    bounds |= {key: floors[f"{key}_ms"] for key in ("compute", "memory", "launch")}
    loads = [
        sass.load_bytes(ins) for name in {row["variant"] for row in rows} for ins in code[name]["listing"].instructions
    ]
    loads = [width for width in loads if width is not None]
    executed_loads = sum(row["loads"] for row in rows)
    return {
        "config": cfg.config,
        "target": f"sm_{capability}",
        "gpu": chip.gpu,
        "precision": precision,
        **{f"{key}_ms": ms for key, ms in bounds.items()},
        "bound": max(bounds, key=bounds.get),
        "launches": len(rows),
        "variants": len({row["variant"] for row in rows}),
        "loads_16b_compiled": sum(width == 16 for width in loads) / len(loads) if loads else None,
        "loads_16b_executed": sum(row["loads_16b"] for row in rows) / executed_loads if executed_loads else None,
    }


def _grouped(rows, precision, capability):
    """The launch rows with the identical ones counted once, `calls` times, heaviest first."""
    grouped = {}
    for row in rows:
        key = json.dumps({k: v for k, v in row.items() if k != "issue_us"}, sort_keys=True)
        grouped.setdefault(key, {"target": f"sm_{capability}", "precision": precision, **row, "calls": 0})
        grouped[key]["calls"] += 1
    return sorted(grouped.values(), key=lambda row: -row["issue_us"] * row["calls"])


def forecast(cfg, workers=None, dump_to=None):
    """{"steps": [a step_forecast per precision and GPU], "launches": [launch rows, grouped]} of `cfg`."""
    steps, launches = [], []
    for precision in PRECISIONS:
        run_cfg, planned = step_launches(cfg, precision)
        census = census_json(run_cfg)
        options = {id(launch): choices(launch) for launch in planned}  # the same configs on every GPU
        variants = [variant for found in options.values() for _, variant in found]
        for capability, chip in CHIPS.items():
            code = compiled(variants, capability, workers)
            if dump_to:
                dump(code, variants, capability, dump_to)
            cache, rows = {}, []
            for launch in planned:  # launches alike in shape, variants and work, once
                key = tuple((v.name, repr(launch.work(launch.constexprs | c.kwargs))) for c, v in options[id(launch)])
                key += (repr(_shape(launch)),)
                if key not in cache:
                    cache[key] = launch_forecast(launch, options[id(launch)], code, chip)
                rows.append(cache[key])
            steps.append(step_forecast(cfg, precision, capability, rows, census, code))
            launches += _grouped(rows, precision, capability)
    return {"steps": steps, "launches": launches}


@dataclass(frozen=True)
class Forecast:
    """What `python -m profiling.bench forecast` shows: forecast()'s dict as JSON (to_json, for --json), or as a
    table with the heaviest launches (show)."""

    found: dict
    cfg: object

    def to_json(self):
        return self.found

    def show(self):
        figures(self.found, self.cfg).show()


def bench_forecast(args, device):
    """The Forecast of the config's step (args.config); with args.dump, every compiled variant's TTGIR, PTX and
    SASS written there; with args.run, of that run's config (one rank's share of its batch), written into its
    folder as forecast.json, whose issue floors the report then takes."""
    if os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes"):
        raise UserError("the forecast compiles with the real Triton compiler: unset TRITON_INTERPRET")
    if args.run:
        folder = records.find(args.run)
        envs = records.read_envs(folder)
        cfg = config.from_record(records.read_config(folder))
        cfg = replace(cfg, batch_size=cfg.batch_size // (envs[-1].get("world_size", 1) if envs else 1))
    else:
        cfg, _ = config.resolve(["--config", args.config], prog="python -m profiling.bench forecast")
    found = forecast(cfg, dump_to=args.dump)
    if args.run:
        records.write_json(folder / records.FORECAST, found)
    return Forecast(found, cfg)


def figures(found, cfg):
    """The steps' forecasts as a table, with the heaviest launches of each in its notes."""
    columns = ["GPU", "precision", "issue ms", "compute ms", "DRAM ms", "launch ms", "bound", "16-B loads"]
    title = f"forecast of one fused training step of {cfg.config} (batch {cfg.batch_size}, {cfg.crop}x{cfg.crop})"
    result = Figures(title, columns)
    for s in found["steps"]:
        shares = f"{s['loads_16b_compiled']:.0%} / {s['loads_16b_executed']:.0%}"
        times = [f"{s[f'{key}_ms']:.1f}" for key in ("issue", "compute", "memory", "launch")]
        result.rows.append([f"{s['gpu']} ({s['target']})", s["precision"], *times, s["bound"], shares])
    result.notes.append(
        "issue: the dense kernels' instructions at 4 per clock per SM (a lower bound); compute, DRAM, launch: "
        "the whole step's census floors; 16-B loads: share of global loads, compiled / executed"
    )
    for s in found["steps"]:  # the heaviest launches of each step
        step = (s["target"], s["precision"])
        heaviest = [row for row in found["launches"] if (row["target"], row["precision"]) == step]
        result.notes += [_launch_note(row) for row in heaviest[:3]]
    return result


def _launch_note(row):
    loops = ", ".join(
        f"{loop['function']} {loop['instructions']} x {loop['trips']:g} ({loop['mma']}, loads "
        + " ".join(f"{n}x{width}" for width, n in sorted(loop["loads"].items()))
        + ")"
        for loop in row["loops"]
    )
    shape = row["shape"]
    blocks = f" x {shape['blocks']} blocks" if shape.get("blocks", 1) > 1 else ""
    where = f" [{shape['n_pixels']} px{blocks}, {shape['C_in']} -> {shape['C_out']}]" if shape else ""
    return (
        f"{row['target']} {row['precision']} {row['kernel']}{where}: {row['calls']} x {row['issue_us']:.0f} us; "
        f"{row['programs']} programs, {row['ctas_per_sm']} per SM, {row['waves']} waves; loops: {loops}"
    )
