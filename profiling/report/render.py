"""The report as the terminal shows it: rich panels, tables and lines drawn from `analyse(folder)`'s data."""

from rich.panel import Panel
from rich.table import Table

from profiling.records import STEP_PHASES
from profiling.report import gpu_trace, roofline
from profiling.report.analysis import WARMUP_STEPS
from profiling.report.verdict import MIN_STEADY
from profiling.stats import counted


def fmt_duration(seconds):
    seconds = max(0, int(seconds))
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return (f"{d}d " if d else "") + f"{h:d}h{m:02d}m" if (d or h) else f"{m}m{s:02d}s"


def header(run):
    cfg, env = run["config"], run["env"]
    dev = env.get("device", {})
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    p = run["progress"]
    fast = "on" if cfg.get("fast_kernels") else "off"
    inverting = ", invertible backprop" if cfg.get("invertible_backprop") else ""
    ranks = f" x{run['world_size']} ranks" if run["world_size"] > 1 else ""
    lines = [
        f"config [bold]{cfg.get('config')}[/]: x{cfg.get('scale')}, batch {cfg.get('batch_size')}, "
        f"crop {cfg.get('crop')}, precision {cfg.get('precision')}, fast kernels {fast}, compile {cfg.get('compile')}"
        f"{inverting}",
        f"device: {dev.get('name', '?')} ({dev.get('type', '?')}){ranks}",
        f"versions: {versions}",
        f"commit: {env.get('git_commit')}   jobs: {run['jobs']}   step {p['last_step']} of {p['steps']}"
        + (" (finished)" if p["finished"] else ""),
    ]
    if env.get("dense_kernels"):
        lines.append(dense_kernels_line(env["dense_kernels"]))
    return Panel("\n".join(lines), title=f"run {run['run']}")


def dense_kernels_line(found):
    """How the dense blocks ran (--dense-kernels): per input shape, the choice and the times it was made on (of a
    coupling's H and G together, where they run in one call)."""
    shapes = []
    for c in found["choices"]:
        together = "H and G: " if c.get("subnets", 1) == 2 else ""
        timed = (
            f" ({together}fused {c['fused_ms']:.2f} ms, cuDNN {c['cudnn_ms']:.2f} ms)"
            if c["fused_ms"] is not None
            else ""
        )
        shapes.append(f"{'x'.join(map(str, c['shape']))} {c['dtype']}: {c['chosen']}{timed}")
    return f"dense blocks ({found['mode']}): " + "; ".join(shapes)


def throughput_line(run):
    """Throughput is one thing wherever the report shows it: the steady step's rate (each job's warm-up, the
    steps under a capture and the scheduled work left out)."""
    t, p = run["throughput"], run["progress"]
    captured = f", {counted(t['captured_steps'], 'step')} under a profiler capture" if t.get("captured_steps") else ""
    if run["steady"]:
        rate = (
            f"throughput: {t['it_per_s']:.2f} it/s, {t['images_per_s']:.1f} images/s, the steady step's (over "
            f"{counted(t['timed_steps'], 'step')}; warm-up{captured} and scheduled work left out)"
        )
    else:
        rate = (
            f"throughput: not measured, {counted(t['timed_steps'], 'steady step')} of the {MIN_STEADY} it needs "
            f"(each job's first {WARMUP_STEPS} steps warm up{captured})"
        )
    if p["finished"]:
        when = f"finished {counted(p['last_step'], 'step')} in {fmt_duration(p['elapsed_s'])} of training loop"
    else:
        when = f"time to step {p['steps']}: {fmt_duration(p['remaining_s'])}"
    return f"{rate}; {when}"


def compile_line(run):
    """What torch.compile cost: each job's first step traces and compiles (never a steady step)."""
    if not run["compile_s"]:
        return []
    each = ", ".join(f"{s:.1f} s" for s in run["compile_s"])
    whose = "each job's" if len(run["compile_s"]) > 1 else "the"
    return [f"torch.compile: {each} tracing and compiling {whose} first step (never a steady step)"]


def phase_table(run):
    steady = "steady state" if run["steady"] else "every step, warm-up included: too few steady steps"
    table = Table(title=f"the training step, by phase ({steady})")
    for col in ("phase", "mean ms", "p50 ms", "p95 ms", "share"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    for name in STEP_PHASES:
        row = run["phases"]["phases"][name]
        if not row["ran"]:
            continue
        table.add_row(
            name, f"{row['mean_ms']:.2f}", f"{row['p50_ms']:.2f}", f"{row['p95_ms']:.2f}", f"{row['share']:.1%}"
        )
    st = run["phases"]
    table.add_row("[bold]step", f"{st['step_ms']:.2f}", f"{st['step_p50_ms']:.2f}", f"{st['step_p95_ms']:.2f}", "100%")
    return table


def scheduled_lines(run):
    lines = []
    for name, s in run["scheduled"].items():
        hint = f"  -> {s['hint']}" if s["hint"] else ""
        count = counted(s["count"], "time")
        lines.append(f"{name}: {count}, {s['total_s']:.1f} s in all, {s['share']:.1%} of the wall time{hint}")
    return ["scheduled work (apart from the step): " + ("none" if not lines else "")] + [f"  {x}" for x in lines]


def gpu_lines(run):
    g = run["gpu"]
    memory = run["phases"].get("mem_peak_mib")
    allocated = f"; step peak allocated {memory / 1024:.2f} GiB" if memory else ""
    if g["kind"] == "gpu":
        power = ""
        if g["power_mean_w"]:
            on_all = f" on all {g['gpus']} GPUs" if g.get("gpus", 1) > 1 else ""
            power = f", mean power {g['power_mean_w']:.0f} W, {g['energy_per_step_j']:.1f} J per step{on_all}"
        throttled = f", throttled {g['throttled_share']:.0%} of samples" if g["throttled_share"] else ""
        return (
            f"GPU {g['devices']}: utilisation mean {g['util_mean']:.0f}%, under 50% in {g['under_50_share']:.0%} "
            f"of samples, peak memory {g['mem_peak_mib'] / 1024:.1f} GiB{power}{throttled}{allocated}"
        )
    if g["kind"] == "process":
        waiting = g.get("waiting_percent_mean")
        waited = f", waiting for a core {waiting:.0f}%" if waiting is not None else ""
        return (
            f"no GPU counters (CPU run or no NVML): process CPU {g['cpu_percent_mean']:.0f}% mean (100% = one core)"
            f"{waited}, peak memory {g['rss_peak_mib'] / 1024:.2f} GiB"
        )
    return "no utilisation samples"


def hardware_lines(run):
    c, hw = run["census"], run["hardware"]
    if not c:
        return ["hardware: no census.json in this run (made before the census existed)"]
    lines = [
        f"one step, counted: {c['flops_per_step'] / 1e12:.3f} TFLOP, {c['bytes_per_step'] / 1e9:.1f} GB moved, "
        f"{c['kernels_per_step']:,} kernels, {c['flops_per_step'] / max(c['bytes_per_step'], 1):.1f} FLOP/byte"
        + (" (eager ops: compilation fuses some, so fewer run)" if c.get("compile", "off") != "off" else "")
    ]
    if not hw:
        lines.append(f"MFU and floors: not judged, no job of the run has {MIN_STEADY} steady steps")
    else:
        own = hw["own"]
        whose = f" (job {hw['job']}'s steady steps, on its own probe)" if run["jobs"] > 1 else ""
        if own.get("peak_tflops"):
            lines.append(
                f"achieved {own['achieved_tflops'] * 1e3:.1f} GFLOP/s = MFU {own['mfu']:.1%} of "
                f"{own['peak_tflops']:.3g} TFLOP/s ({own['peak_source']}){whose}"
            )
        if own.get("floor_ms"):
            floors = ", ".join(
                f"{k} {own[f'{k}_ms']:.2f} ms" for k in ("compute", "memory", "launch") if f"{k}_ms" in own
            )
            lines.append(
                f"floors on this device: {floors}; the step is {hw['vs_floor']:.1f}x its {own['bound']} floor{whose}"
            )
        lines += job_lines(run)
    captured = (run["torch_profile"] or {}).get("kernels_per_step")
    if captured and captured.get("mean"):
        lines.append(
            f"torch.profiler counted {captured['mean']:,.0f} {captured['unit']} per step; "
            f"the census estimates {c['kernels_per_step']:,} GPU kernels ({c['ops_per_step']:,} aten ops)"
        )
    return lines


def job_lines(run):
    """Each job judged against its own probe, where more than one job has steady steps to judge."""
    judged = [job for job in run["by_job"] if job["hardware"]]
    if len(judged) < 2:
        return []
    lines = []
    for job in judged:
        hw = job["hardware"]
        own = hw["own"]
        lines.append(
            f"  job {job['job']} (from step {job['start_step'] + 1}, {counted(job['steady_steps'], 'steady step')}): "
            f"{job['step_ms']:.1f} ms a step, {hw['vs_floor']:.1f}x its {own['bound']} floor on its own probe "
            f"(launch {own['launch_us']:.1f} us, {own['peak_tflops']:.3g} TFLOP/s)"
        )
    return lines


def forecast_table(forecasts, precision, batch, launch_us):
    """Floors of one step on each named GPU, its bound, and the images/s a step at the floor would give."""
    launches = f"launches at {launch_us:g} us" if launch_us else "no launch floor: CUDA graphs"
    table = Table(title=f"this step on other GPUs ({precision}; floors, {launches})")
    issue = any("issue_ms" in f for f in forecasts.values())  # a forecast.json covers some of the GPUs
    floors = ["compute_ms", "memory_ms", "launch_ms"] + (["issue_ms"] if issue else [])
    columns = ["GPU", "math", *(k.replace("_ms", " ms") for k in floors), "bound", "images/s at the floor"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("GPU", "bound") else "right")
    for key, f in forecasts.items():
        cells = [f"{f[k]:.2f}" if k in f else "-" for k in floors]
        table.add_row(roofline.GPUS[key].name, f["math"], *cells, f["bound"], f"{batch / f['floor_ms'] * 1e3:,.0f}")
    return table


def verdict_panel(run):
    v = run["verdict"]
    return Panel(f"[bold]{v['label']}[/]: {v['evidence']}.\nnext: {v['next']}.", title="bottleneck")


def rank_table(run):
    table = Table(title="ranks")
    clock = next((r["allreduce_clock"] for r in run["ranks"] if "allreduce_clock" in r), None)
    reduce_col = (f"all-reduce ms ({'device' if clock == 'cuda' else 'host'} time)",) if clock else ()
    for col in ("rank", "step ms", "data ms", "backward ms (incl. all-reduce)", "work before all-reduce ms"):
        table.add_column(col, justify="right")
    for col in (*reduce_col, ""):
        table.add_column(col, justify="right")
    for r in run["ranks"]:
        cells = [str(r["rank"]), *(f"{r[k]:.1f}" for k in ("step_ms", "data_ms", "backward_ms", "work_ms"))]
        cells += [f"{r.get('allreduce_ms', 0.0):.1f}"] if clock else []
        table.add_row(*cells, "[red]straggler (>10% over median)" if r["straggler"] else "")
    return table


EXPLOSIONS_SHOWN = 5  # the newest explosions listed; explosions.jsonl holds every one


def explosion_lines(run):
    events = run["explosions"]
    if not events:
        return ["gradient explosions: none recorded"]
    skipped = sum(e["kind"] == "non-finite" for e in events)
    shown = events[-EXPLOSIONS_SHOWN:]
    which = f"; the last {len(shown)} of them" if len(shown) < len(events) else ""
    lines = [f"gradient explosions: {len(events)} recorded ({skipped} non-finite and skipped){which}:"]
    for e in shown:
        loss = sum(e["losses"].values())
        images = ", ".join(sorted(set(e["images"])))
        batch = e["batch_file"] or "not kept (--explosion-batches-kept reached)"
        lines.append(
            f"  step {e['step']}: {e['kind']}, loss {loss:.4g}, grad norm {e['grad_norm']:.4g}, "
            f"images {images}, batch {batch}"
        )
    lines.append(f"  which samples: python -m engine.replay {run['run']} [--step N]")
    return lines


def loss_lines(run):
    ls = run["losses"]
    if not ls:
        return ["losses: no trained step yet"]
    lines = [f"losses (mean of first/last {counted(ls['window'], 'step')}):"]
    for key in ("loss", "forw_fit", "forw_ce", "back_rec", "grad_norm"):
        if ls[key]["first"] is None:  # every step so far an fp16 overflow: no grad norm logged
            continue
        lines.append(f"  {key:9s} {ls[key]['first']:12.4g} -> {ls[key]['last']:12.4g}   (min {ls[key]['min']:.4g})")
    if "validation" in ls:
        v = ls["validation"]
        lines.append(f"  validation at step {v['step']}: PSNR-Y {v['val_psnr_y']:.2f} dB, SSIM-Y {v['val_ssim_y']:.4f}")
    return lines


def profile_table(run):
    prof = run["torch_profile"]
    table = Table(title=f"torch.profiler: top ops by self {prof['clock'].upper()} time")
    for col in ("op", "self ms", "calls", "share"):
        table.add_column(col, justify="left" if col == "op" else "right")
    for row in prof["top"][:10]:
        table.add_row(row["name"][:60], f"{row['self_ms']:.2f}", str(row["calls"]), f"{row['share']:.1%}")
    return table


def gpu_trace_lines(run):
    """Holistic Trace Analysis's breakdowns of a GPU trace: where each rank's GPU time went, the longest
    kernels, and how the kernels were launched."""
    found = run["gpu_trace"]
    if not found or "note" in found:
        return [found["note"]] if found else []
    lines = ["the GPU trace, by Holistic Trace Analysis (the --torch-profile window):"]
    for t in found["temporal"]:
        span = t["span_us"] or 1
        lines.append(
            f"  rank {t['rank']}: of the {t['span_us'] / 1e3:.2f} ms from its first kernel to its last, the GPU "
            f"was idle {t['idle_us'] / span:.1%}, computing {t['compute_us'] / span:.1%}, copying, setting memory "
            f"or communicating {t['non_compute_us'] / span:.1%}"
        )
    lines.append(
        "  kernel time by type: " + ", ".join(f"{k['type'].lower()} {k['share']:.1%}" for k in found["kernel_types"])
    )
    for k in found["kernels"]:
        lines.append(
            f"  {k['name'][:80]}: {k['total_us'] / 1e3:.2f} ms in all, {k['mean_us']:.1f} us each (rank {k['rank']})"
        )
    for rank, n in found["launches"].items():
        lines.append(
            f"  rank {rank}, {counted(n['launches'], 'kernel launch', 'kernel launches')}: the call "
            f"{n['cpu_us_mean']:.1f} us and the kernel {n['gpu_us_mean']:.1f} us on average; kernels shorter than "
            f"their launch call: {n['shorter_than_launch']:,}; calls over {gpu_trace.SLOW_LAUNCH_US} us: "
            f"{n['slow_launches']:,}; kernels starting over {gpu_trace.LATE_START_US} us after their call: "
            f"{n['late_starts']:,} (median delay {n['delay_us_median']:,.0f} us)"
        )
    return lines


def render(console, run):
    console.print(header(run))
    console.print(throughput_line(run))
    for line in compile_line(run):
        console.print(line)
    console.print(phase_table(run))
    for line in scheduled_lines(run) + [gpu_lines(run)] + hardware_lines(run):
        console.print(line)
    console.print(verdict_panel(run))
    if run["hardware"]:
        batch = run["config"].get("batch_size", 0) // max(run["world_size"], 1)  # the census counts one rank
        hw, precision = run["hardware"], run["config"].get("precision", "fp32")
        console.print(forecast_table(hw["forecasts"], precision, batch, hw["forecast_launch_us"]))
    if run["ranks"]:
        console.print(rank_table(run))
    if run["torch_profile"]:
        console.print(profile_table(run))
    for line in gpu_trace_lines(run):
        console.print(line)
    if run["captures"]:
        console.print(f"captures in the run folder: {', '.join(run['captures'])}")
    for line in explosion_lines(run) + loss_lines(run):
        console.print(line)


def comparison_rows(first, second):
    """[(figure, first run's value, second run's value)] for the figures both runs have."""
    rows = [
        ("it/s", first["throughput"]["it_per_s"], second["throughput"]["it_per_s"]),
        ("images/s", first["throughput"]["images_per_s"], second["throughput"]["images_per_s"]),
        ("step ms", first["phases"]["step_ms"], second["phases"]["step_ms"]),
    ]
    rows += [
        (f"{p} ms", first["phases"]["phases"][p]["mean_ms"], second["phases"]["phases"][p]["mean_ms"])
        for p in STEP_PHASES
        if first["phases"]["phases"][p]["ran"] or second["phases"]["phases"][p]["ran"]
    ]
    if first["gpu"]["kind"] == second["gpu"]["kind"] == "gpu":
        rows.append(("GPU util %", first["gpu"]["util_mean"], second["gpu"]["util_mean"]))
    if first["hardware"] and second["hardware"]:
        a, b = first["hardware"], second["hardware"]
        rows.append(("GFLOP per step", a["census"]["flops_per_step"] / 1e9, b["census"]["flops_per_step"] / 1e9))
        rows.append(("GB per step", a["census"]["bytes_per_step"] / 1e9, b["census"]["bytes_per_step"] / 1e9))
        rows.append(("kernels per step", a["census"]["kernels_per_step"], b["census"]["kernels_per_step"]))
        if a["own"].get("mfu") is not None and b["own"].get("mfu") is not None:
            rows.append(("MFU %", 100 * a["own"]["mfu"], 100 * b["own"]["mfu"]))
        for key in roofline.GPUS:
            rows.append((f"floor on {key} ms", a["forecasts"][key]["floor_ms"], b["forecasts"][key]["floor_ms"]))
    if first["losses"] and second["losses"]:
        rows.append(("last loss", first["losses"]["loss"]["last"], second["losses"]["loss"]["last"]))
    return rows


def comparison_table(first, second):
    """Two runs side by side; the ratio divides the second run's figure by the first's."""
    table = Table(title=f"{first['run']} vs {second['run']}", caption=f"ratio = {second['run']} / {first['run']}")
    for col in ("", first["run"], second["run"], "ratio"):
        table.add_column(col, justify="right")
    for name, x, y in comparison_rows(first, second):
        table.add_row(name, f"{x:,.3f}", f"{y:,.3f}", f"{y / x:.2f}x" if x else "-")
    return table
