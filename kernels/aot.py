"""Ahead-of-time compiles of every Triton kernel variant for real GPUs, on a machine without one.

`triton.compile` lowers each variant (kernel, dtypes, constexprs) to a cubin for a GPUTarget; the
cuobjdump that ships with triton reads the cubin's resource usage: registers per thread, and local
memory, which is where registers spill. A kernel that compiles here compiles on the GPU; one that
spills here spills there. Run in a process without TRITON_INTERPRET (the interpreter replaces the
jit kernels that the compiler needs).
"""

import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGETS = {60: "P100", 80: "A100", 90: "H100"}
NEEDS_SM80 = ("bf16",)  # bf16 arithmetic needs compute capability 8.0


def variants():
    """(name, jit kernel, signature, constexprs) of every kernel variant the ops launch."""
    from kernels import coupling, dense, haar

    return [*haar.aot_variants(), *coupling.aot_variants(), *dense.aot_variants()]


def supported(name, capability):
    return capability >= 80 or not any(kind in name for kind in NEEDS_SM80)


def resource_usage(cubin):
    """{'REG': registers per thread, 'LOCAL': local-memory bytes per thread (spills), 'SHARED': bytes}."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    return {key: int(value) for key, value in re.findall(r"\b(REG|LOCAL|SHARED|STACK):(\d+)", out)}


def compile_one(name, fn, signature, constexprs, capability):
    """One variant for one target: its registers and spills, or the compiler's error."""
    row = {"kernel": name, "target": f"sm_{capability}", "gpu": TARGETS.get(capability, "")}
    try:
        kernel = triton.compile(
            ASTSource(fn, signature, constexprs=constexprs), target=GPUTarget("cuda", capability, 32)
        )
    except Exception as err:  # noqa: B902  (any compiler failure is the finding itself)
        return row | {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    usage = resource_usage(kernel.asm["cubin"])
    spills = usage.get("LOCAL", 0) + usage.get("STACK", 0)
    return row | {"registers": usage.get("REG"), "spill_bytes": spills, "shared_bytes": kernel.metadata.shared}


def _compile_job(job):
    index, capability = job
    name, fn, signature, constexprs = variants()[index][:4]
    return compile_one(name, fn, signature, constexprs, capability)


def compile_all(capabilities=tuple(TARGETS), workers=None):
    """Rows of compile_one for every variant on every target it supports, compiled in parallel."""
    jobs = [(i, cap) for i, v in enumerate(variants()) for cap in capabilities if supported(v[0], cap)]
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        return list(pool.map(_compile_job, jobs))
