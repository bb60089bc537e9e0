"""The bottleneck of a run in plain words: what holds its time, the evidence, and what to try next.

The rules, in the order they are tried (the first that holds is the verdict):

1. too short: fewer than MIN_STEADY steady steps (warm-up, compilation and capture steps never count): the
   report does not guess.
2. CPU-starved: on a CPU run, the trainer's threads waited for a core (the kernel's run-queue time,
   /proc/self/task/*/schedstat) at least STARVED x as long as they ran, and a quarter of a core's time or
   more: another job shares the cores, or the process runs more threads than it has cores; or the latest
   job ran on under STARVED x the CPU an earlier job of the run had. Judged before any floor, since every
   figure is then the neighbours' as much as the step's.
3. straggler: under DDP, a rank whose work before the all-reduce is more than 10% over the median rank's
   (with two ranks, their mean); the others wait for it in every step.
4. scheduled work: validation, checkpoints or captures taking more than SCHEDULED_SHARE of the wall time.
5. a phase over its usual share of the step (PHASE_LIMITS: data 15%, h2d 10%, loss 20%, optimizer 15%,
   logging 10%, other, the loop's own work between the phases, 15%); the one furthest over its limit is named.
6. host-bound: on a GPU, utilisation under 80% although no phase is over its share.
7. X-bound: the step is within NEAR_FLOOR x of its largest floor (compute, memory or launch, on this device;
   profiling/report/roofline.py). Further from every floor, the verdict says so, with the nearest floor, and
   names the largest phase: the phase table and a capture say where the time goes. Each job's steps are set
   against that job's own probe (its launch cost and matrix-product rate); the verdict takes the latest job
   with steady steps.
"""

from statistics import median

from profiling.report import roofline
from profiling.stats import counted

MIN_STEADY = 5
STARVED = 0.5  # run-queue wait over CPU time at which a process is starved of CPU...
STARVED_WAITING = 25.0  # ...when it waits at least this long (% of one core): a sleeping process is not starved
SCHEDULED_SHARE = 0.25
NEAR_FLOOR = 3.0
PHASE_LIMITS = {  # phase: (share of the step above which it is the bottleneck, label, what it is, what to try)
    "data": (0.15, "data-bound", "the training loop waited for data",
             "raise --workers, or lower the cost of each crop (the images are decoded once, into memory)"),
    "h2d": (0.10, "copy-bound", "host-to-device copies took",
            "keep the batch small on the host (uint8 HR crops), pinned (it is under CUDA), and copied once"),
    "loss": (0.20, "loss-bound", "computing the losses took",
             "the losses are three reductions over the images: capture the step (--torch-profile) for what else runs"),
    "optimizer": (0.15, "optimizer-bound", "the optimizer phase (clipping, the loss mean over ranks, Adam) took",
                  "capture the step (--torch-profile) for what runs in it; Adam is fused, clipping foreach already"),
    "logging": (0.10, "logging-bound", "writing the step's records took",
                "write the run folder to a faster, local disk, or mirror fewer dashboards"),
    "other": (0.15, "overhead-bound", "the loop's own work outside the timed phases took",
              "a host sync or Python work between the phases: record it with --py-spy START:STOP"),
}  # fmt: skip
NEXT_FOR_PHASE = {
    "forward": "capture the step (--torch-profile START:STOP) to see which of the forward's ops hold it",
    "backward": "capture the step (--torch-profile START:STOP) to see which of the backward's ops hold it",
}


def verdict(label, evidence, next_step, rule, phase=None):
    return {"label": label, "evidence": evidence, "next": next_step, "rule": rule, "phase": phase}


def bottleneck(stats, steady_steps, scheduled, gpu, device_type, hw, cfg, ranks, jobs=()):
    """The verdict of a run's steady steps: {'label', 'evidence', 'next', 'rule', 'phase'} (the rule's number
    and name, and the phase it points at, if any)."""
    judges = (too_short, starved, starved_against_earlier_jobs, straggler, scheduled_work, phase_over_its_share,
              host_bound)  # fmt: skip
    for judge in judges:
        found = judge(stats=stats, steady_steps=steady_steps, scheduled=scheduled, gpu=gpu, device_type=device_type,
                      cfg=cfg, ranks=ranks, jobs=jobs)  # fmt: skip
        if found:
            return found
    return against_the_floors(stats, hw, cfg, device_type)


def too_short(steady_steps, **_):
    if steady_steps < MIN_STEADY:
        return verdict(
            "too short to judge",
            f"{steady_steps} steady steps (each job's first steps warm up and compile, captured steps are left out)",
            f"let it run at least {MIN_STEADY} steps past its warm-up",
            "1 too short",
        )
    return None


def starved(gpu, **_):
    if gpu.get("kind") != "process" or gpu.get("waiting_percent_mean") is None:
        return None
    waiting, running = gpu["waiting_percent_mean"], gpu["cpu_percent_mean"]
    if waiting < STARVED_WAITING or waiting < STARVED * running:
        return None
    return verdict(
        "CPU-starved",
        f"the trainer's threads waited for a CPU core {waiting:.0f}% of the time while running {running:.0f}% "
        "(100% = one core): its figures are those of a shared machine",
        "give the job cores of its own (e.g. SLURM --cpus-per-task), or fewer threads (OMP_NUM_THREADS) than cores",
        "2 CPU-starved",
    )


def starved_against_earlier_jobs(jobs, **_):
    """The latest job ran on far less CPU than an earlier one of the same run did."""
    ran = [job for job in jobs if job.get("cpu_percent_mean") is not None]
    if len(ran) < 2:
        return None
    latest, best = ran[-1], max(ran[:-1], key=lambda job: job["cpu_percent_mean"])
    if latest["cpu_percent_mean"] >= STARVED * best["cpu_percent_mean"]:
        return None
    return verdict(
        "CPU-starved",
        f"job {latest['job']} ran on {latest['cpu_percent_mean']:.0f}% of a core (100% = one core) where job "
        f"{best['job']} of the same run had {best['cpu_percent_mean']:.0f}%: its figures are those of a shared machine",
        "give the job cores of its own (e.g. SLURM --cpus-per-task), as the earlier job had",
        "2 CPU-starved",
    )


def straggler(ranks, **_):
    slow = [r for r in ranks if r["straggler"]]
    if not slow:
        return None
    typical = median(r["work_ms"] for r in ranks)
    worst = max(slow, key=lambda r: r["work_ms"])
    return verdict(
        "straggler",
        f"rank {worst['rank']}'s work before the all-reduce takes {worst['work_ms']:.1f} ms, "
        f"{worst['work_ms'] / typical:.1f}x the median rank's {typical:.1f} ms: every rank waits for it",
        "look at that rank's data wait and its node (disk, loader workers, other jobs on its cores)",
        "3 straggler",
    )


def scheduled_work(scheduled, **_):
    heavy = {name: s for name, s in scheduled.items() if s["share"] > SCHEDULED_SHARE}
    if not heavy:
        return None
    name, s = max(heavy.items(), key=lambda item: item[1]["share"])
    return verdict(
        f"{name}-heavy",
        f"{name} took {s['share']:.0%} of the wall time ({counted(s['count'], 'time')}, {s['total_s']:.1f} s)",
        s["hint"] or f"do the {name} less often",
        "4 scheduled work",
        name,
    )


def phase_over_its_share(stats, **_):
    share = {name: row["share"] for name, row in stats["phases"].items()}
    over = {name: share.get(name, 0.0) / limit for name, (limit, *_) in PHASE_LIMITS.items()}
    over = {name: times for name, times in over.items() if times > 1}
    if not over:
        return None
    name = max(over, key=over.get)
    _, label, what, advice = PHASE_LIMITS[name]
    return verdict(label, f"{what} {share[name]:.0%} of each step", advice, "5 a phase over its share", name)


def host_bound(gpu, device_type, cfg, **_):
    if device_type != "cuda" or gpu.get("kind") != "gpu" or gpu["util_mean"] >= 80:
        return None
    return verdict(
        "host-bound",
        f"the GPU was busy only {gpu['util_mean']:.0f}% of the time ({gpu['under_50_share']:.0%} of samples under "
        "50%) although no phase of the step holds more than its share",
        roofline.next_steps("launch", cfg),
        "6 host-bound",
    )


def against_the_floors(stats, hw, cfg, device_type):
    own = hw and hw["own"]
    largest = max(stats["phases"], key=lambda name: stats["phases"][name]["share"])
    share = stats["phases"][largest]["share"]
    if not (own and own.get("bound")):
        return verdict(
            f"{largest}-heavy",
            f"{largest} holds {share:.0%} of each step; no floor to set it against (the run has no census, or no job "
            f"with {MIN_STEADY} steady steps to set against its own probe)",
            NEXT_FOR_PHASE.get(largest, "capture the step (--torch-profile START:STOP)"),
            "7 no floor",
            largest,
        )
    floor = f"its {own['bound']} floor of {own['floor_ms']:.1f} ms"
    mfu = f", MFU {own['mfu']:.0%}" if own.get("mfu") is not None else ""
    if hw["vs_floor"] <= NEAR_FLOOR:
        evidence = f"the step takes {hw['step_ms']:.1f} ms, {hw['vs_floor']:.1f}x {floor}{mfu}"
        if own["bound"] == "launch":
            evidence += f" (about {hw['census']['kernels_per_step']:,} kernels per step)"
        next_step = roofline.next_steps(own["bound"], cfg) if device_type == "cuda" else "train on a CUDA GPU"
        return verdict(f"{own['bound']}-bound", evidence, next_step, "7 near a floor")
    return verdict(
        "far from every floor",
        f"the step takes {hw['step_ms']:.1f} ms, {hw['vs_floor']:.1f}x even {floor}{mfu}; {largest} holds "
        f"{share:.0%} of it",
        f"the phase table says where the time goes; {NEXT_FOR_PHASE.get(largest, 'capture the step (--py-spy)')}",
        "7 far from the floors",
        largest,
    )
