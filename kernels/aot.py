"""Ahead-of-time compiles of every Triton kernel variant for real GPUs, on a machine without one.

`triton.compile` lowers each variant (kernel, dtypes, constexprs, and the alignment the JIT specialises
on) to a cubin for a GPUTarget; the cuobjdump that ships with triton reads the cubin's resource usage:
registers per thread, and local memory, which is where registers spill. A kernel that compiles here
compiles on the GPU; one that spills here spills there. Run in a process without TRITON_INTERPRET (the
interpreter replaces the jit kernels that the compiler needs).

    python -m kernels.aot [--targets 80,90] [--select REGEX] [--workers N]    # one JSON row per compile
"""

import argparse
import functools
import hashlib
import importlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGETS = {60: "P100", 80: "A100", 90: "H100"}
NEEDS_SM80 = ("*bf16", "bf16")  # bf16 arithmetic needs compute capability 8.0


class Variant(NamedTuple):
    """One kernel variant, as ASTSource takes it."""

    name: str  # unique, spelling out every specialisation
    short: str  # unique too, and short enough to read: short_name
    fn: object  # the @triton.jit function
    signature: dict
    constexprs: dict
    attrs: dict  # ASTSource attrs: the arguments the JIT finds 16-divisible at run time (dense kernels)


def _entries(capability):
    """aot_variants entries, (name, fn, signature, constexprs[, attrs]), of every kernel; the dense ones
    with the run-time alignment the JIT specialises on and every tile config (none before
    dense.MIN_CAPABILITY, where the engine keeps cuDNN for the dense blocks)."""
    from kernels import coupling, dense, haar

    entries = [*haar.aot_variants(), *coupling.aot_variants()]
    if capability is None or capability >= dense.MIN_CAPABILITY:
        entries += dense.aot_variants(attrs=True)
    return entries


@functools.cache
def variants(capability=None):
    """Every kernel variant the ops launch (haar, coupling, dense), each compiled as the GPU runs it. With a
    compute capability (80 for sm_80), those that GPU launches and supports; without, every GPU's."""
    shorts = _short_names()
    found = []
    for name, fn, signature, constexprs, *attrs in _entries(capability):
        found.append(Variant(name, shorts[name], fn, signature, constexprs, attrs[0] if attrs else {}))
    return tuple(v for v in found if capability is None or supported(v, capability))


def supported(variant, capability):
    """Whether a GPU of `capability` can run the variant: bf16 needs sm_80."""
    return capability >= 80 or not any(kind in NEEDS_SM80 for kind in variant.signature.values())


# --- names: kernel family, role, dtypes and tiles -------------------------------------------------

# the dense kernels' flags, by the convs of the block that launch them
_DENSE_FORWARD_ROLES = {True: "c1-4", False: "c5"}  # ACTIVATION
_DENSE_BACKWARD_ROLES = {  # ACCUMULATE, SLOPE_TAIL, INPUT_GRAD; c1-nodx: conv 1 when x needs no gradient
    (False, True, True): "c5",
    (True, True, True): "c2-4",
    (True, False, True): "c1",
    (True, False, False): "c1-nodx",
}


def family(variant):
    """haar, coupling, dense_pack (the dense block's weight packing), dense_fwd or dense_bwd."""
    fn = variant.fn.__name__
    if fn.startswith(("_haar", "_coupling")):
        return fn[1:].split("_")[0]
    if fn.startswith("_pack"):
        return "dense_pack"
    return "dense_bwd" if "backward" in fn else "dense_fwd"


def dtype(variant):
    """The data's dtype, then the weights' where they differ (the packing of fp32 weights under autocast):
    'fp16/w32'."""
    signature = variant.signature
    data = next(signature[name] for name in ("feat", "src", "x", "grad", "packed") if name in signature)[1:]
    weight = signature.get("w1", "")[1:]
    return data if not weight or weight == data else f"{data}/w{weight[2:]}"


def short_name(variant):
    """'haar inv fp16', 'coupling fwd-bwd bf16', 'dense_pack+copy bf16/w32', 'dense_fwd c1-4 fp32 tf32 M64 N32 K16',
    'dense_bwd c5>3 fp16 M32 N32 K32 P64 WN32 WC64' (conv 5 of a block into 3 channels; tiles: BLOCK_M, ...)."""
    kind, c = family(variant), variant.constexprs
    if kind == "dense_pack":  # the forward's also copies x into the feature buffer
        return f"{kind}{'+copy' if c['COPY_PIXELS'] else ''} {dtype(variant)}"
    if kind in ("haar", "coupling"):
        backward = "-bwd" if "backward" in variant.fn.__name__ else ""
        return f"{kind} {'inv' if c['INVERSE'] else 'fwd'}{backward} {dtype(variant)}"
    if kind == "dense_fwd":
        role = _DENSE_FORWARD_ROLES[c["ACTIVATION"]]
        tiles = ("M", "N", "K")
    else:
        role = _DENSE_BACKWARD_ROLES.get((c["ACCUMULATE"], c["SLOPE_TAIL"], c["INPUT_GRAD"]), "?")
        role += f">{c['C_OUT']}"  # its output channels, a constexpr
        tiles = ("M", "N", "K", "P", "WN", "WC")
    precision = f" {c['PRECISION']}" if dtype(variant) == "fp32" else ""  # TF32 or not: fp32 only
    return f"{kind} {role} {dtype(variant)}{precision} " + " ".join(f"{t}{c['BLOCK_' + t]}" for t in tiles)


@functools.cache
def _short_names():
    """{name: short name}, over every GPU's variants. Variants that differ only in their specialisation
    (other channel counts: other arguments 16-divisible or equal to 1) have the arguments specialised in
    one of them and not in all of them after their short name: '+16:partial_stride', '+1:s_c'."""
    groups = {}
    for entry in _entries(None):
        name, fn, signature, constexprs, *_ = entry
        groups.setdefault(short_name(Variant(name, "", fn, signature, constexprs, {})), []).append(entry)
    shorts = {}
    for short, entries in groups.items():
        specialised = [_specialised(entry) for entry in entries]
        common = set.intersection(*specialised)
        for entry, args in zip(entries, specialised, strict=True):
            shorts[entry[0]] = " ".join([short, *sorted(args - common)])
    if len(set(shorts.values())) < len(shorts):  # the same arguments specialised otherwise: a digest
        shorts = {name: f"{short} ~{hashlib.sha1(name.encode()).hexdigest()[:4]}" for name, short in shorts.items()}
    return shorts


def _specialised(entry):
    """The arguments the JIT specialises in this variant: {'+16:name'} for 16-divisible, {'+1:name'} for 1."""
    name, fn, signature, constexprs, *attrs = entry
    aligned = {f"+16:{fn.arg_names[i]}" for (i,) in (attrs[0] if attrs else {})}
    return aligned | {f"+1:{arg}" for arg in constexprs if not arg.isupper()}


# --- compiling --------------------------------------------------------------------------------------


def resource_usage(cubin):
    """{'REG': registers per thread, 'LOCAL': local-memory bytes per thread (spills), 'STACK', 'SHARED'}."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    return {key: int(value) for key, value in re.findall(r"\b(REG|LOCAL|SHARED|STACK):(\d+)", out)}


def _cpu_seconds():
    """CPU time of this process and its finished children (ptxas, cuobjdump): the compile work, which
    other load on the machine does not inflate as it does wall time."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def compile_variant(variant, capability):
    """triton.compile of one variant for one target: the CompiledKernel, its asm by stage (the compiler's
    errors pass through)."""
    source = ASTSource(variant.fn, variant.signature, constexprs=variant.constexprs, attrs=variant.attrs)
    with warnings.catch_warnings(), knobs.cache.scope():
        knobs.cache.dir = _line_true_cache(variant.fn)
        # Triton 3.9 warns that its FP-fusion default will change; this compiles with the JIT's default
        warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION")
        return triton.compile(source, target=GPUTarget("cuda", capability, 32))


def _line_true_cache(fn):
    """A Triton cache folder named by the kernel's source file, its path and its whole content. Triton keys
    a compile by the jit functions' own source, but a cubin's line table names the file it was compiled
    from, by absolute path and line: one cached from another checkout, or before lines above a kernel
    moved, would point kernels/sass.py at lines that are not today's."""
    path = os.path.abspath(fn.fn.__code__.co_filename)
    with open(path, "rb") as f:
        digest = hashlib.sha1(path.encode() + b"\0" + f.read()).hexdigest()[:16]
    return os.path.join(knobs.cache.dir, f"irnscope-lines-{digest}")


def _usage(kernel):
    """Registers, spilled bytes and shared memory of a compiled kernel."""
    usage = resource_usage(kernel.asm["cubin"])
    spilled = usage.get("LOCAL", 0) + usage.get("STACK", 0)
    return {"registers": usage.get("REG"), "spill_bytes": spilled, "shared_bytes": kernel.metadata.shared}


def compile_one(variant, capability, loops=False):
    """One variant for one target: a row with its registers, spilled bytes and compile CPU time, or the
    compiler's error; with `loops`, the dense kernels' rows hold their SASS's main loops too
    (kernels.sass.main_loops; nvdisasm reads sm_75 and later)."""
    row = {"kernel": variant.name, "short": variant.short, "family": family(variant), "dtype": dtype(variant)}
    row |= {"target": f"sm_{capability}", "gpu": TARGETS.get(capability, "")}
    start = _cpu_seconds()
    try:
        kernel = compile_variant(variant, capability)
    except Exception as err:  # any compiler failure is the finding itself
        return row | {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    if loops and row["family"].startswith("dense"):
        from kernels import sass

        row["main_loops"] = sass.main_loops(sass.read(sass.disassemble(kernel.asm["cubin"])))
        row["constexprs"] = {k: v for k, v in variant.constexprs.items() if isinstance(v, int | str)}
        row["divisible"] = sorted(variant.fn.arg_names[i] for (i,) in variant.attrs)
        row["pointers"] = {k: v for k, v in variant.signature.items() if v.startswith("*")}
    return row | _usage(kernel) | {"cpu_s": round(_cpu_seconds() - start, 3)}


def compiled_code(variant, capability):
    """One variant's compile for one target: its TTGIR, PTX and SASS (with the line table, kernels/sass.py)
    beside its registers, spilled bytes and shared memory."""
    from kernels import sass

    kernel = compile_variant(variant, capability)
    code = {"ttgir": kernel.asm["ttgir"], "ptx": kernel.asm["ptx"], "sass": sass.disassemble(kernel.asm["cubin"])}
    return code | _usage(kernel)


def _code_job(job):
    module, fn_name, variant, capability = job
    fn = getattr(importlib.import_module(module), fn_name)  # jit functions travel by name
    return compiled_code(variant._replace(fn=fn), capability)


def compile_code(variants, capability, workers=None):
    """compiled_code of each variant for one target, in parallel processes (one per CPU by default)."""
    jobs = [(v.fn.fn.__module__, v.fn.fn.__name__, v._replace(fn=None), capability) for v in variants]
    with ProcessPoolExecutor(max_workers=workers or _cpus()) as pool:
        return list(pool.map(_code_job, jobs))


def _compile_job(job):
    capability, index, loops = job
    return compile_one(variants(capability)[index], capability, loops)


def _cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def compile_all(capabilities=tuple(TARGETS), workers=None, select=None, loops=False):
    """compile_one's rows for every variant that each target launches and supports, target by target in
    variants() order, compiled in parallel processes (one per CPU by default). select(variant,
    capability) -> bool narrows the compiles; `loops` adds each one's main loops."""
    chosen = [(cap, i) for cap in capabilities for i, v in enumerate(variants(cap)) if not select or select(v, cap)]
    jobs = [(cap, i, loops) for cap, i in chosen]
    # the dense kernels take longest: first, so that the workers finish together
    ordered = sorted(jobs, key=lambda job: not family(variants(job[0])[job[1]]).startswith("dense"))
    with ProcessPoolExecutor(max_workers=workers or _cpus()) as pool:
        rows = dict(zip(ordered, pool.map(_compile_job, ordered), strict=True))
    return [rows[job] for job in jobs]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m kernels.aot", description=__doc__.splitlines()[0])
    p.add_argument("--targets", default=",".join(map(str, TARGETS)), help="compute capabilities, e.g. 80,90")
    p.add_argument("--select", default="", help="only the variants whose name or short name matches this regex")
    p.add_argument("--workers", type=int, default=None, help="compiling processes (default: one per CPU)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes"):
        sys.exit("ahead-of-time compiles need the real Triton compiler: unset TRITON_INTERPRET")
    pattern = re.compile(args.select)

    def select(variant, capability):
        return bool(pattern.search(variant.name) or pattern.search(variant.short))

    for row in compile_all(tuple(int(t) for t in args.targets.split(",")), args.workers, select):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
