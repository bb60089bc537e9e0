"""The package layout's one-way dependencies, read from the source's import statements.

kernels/ (torch, triton)  <-  model (engine's network, API, data, ...)  <-  training  ->  profiling runtime
profiling's report side reads a run folder through profiling/records.py alone.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)

MODEL = {
    "api",
    "irn",
    "ops",
    "losses",
    "metrics",
    "images",
    "grids",
    "data",
    "imresize",
    "evaluation",
    "errors",
    "paper",
    "backprop",
    "benchmarks",
}
MODEL_CLIS = {"evaluate", "rescale"}
TRAINING = {
    "trainer",
    "train",
    "guard",
    "checkpoint",
    "distributed",
    "progress",
    "rundir",
    "config",
    "replay",
    "stopping",
    "node_data",
}
PROFILING_RUNTIME = {"timer", "gpu", "capture", "flamegraph", "records", "stats", "counting", "probe", "tensorboard"}
REPORT = {"report", "analysis", "plots", "roofline"}
TOOLS = {"bench", "census", "targets"}  # drivers that run the engine to measure it


def modules(package):
    return sorted(p for p in (REPO / package).glob("*.py") if p.stem != "__init__")


def imports(path):
    """Top-level names of everything `path` imports: 'engine.irn', 'torch', ..."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names if node.module in ("engine", "profiling")}
    return found


def ours(names, package):
    """The modules of `package` among imported names ('engine.irn' -> 'irn')."""
    return {n.split(".")[1] for n in names if n.startswith(package + ".") and len(n.split(".")) > 1}


def test_every_module_is_classified():
    named = MODEL | MODEL_CLIS | TRAINING | PROFILING_RUNTIME | REPORT | TOOLS
    unknown = [p for package in ("engine", "profiling") for p in modules(package) if p.stem not in named]
    assert not unknown, f"classify these modules in tests/test_layout.py: {unknown}"


@pytest.mark.parametrize("path", modules("kernels"), ids=lambda p: p.stem)
def test_kernels_import_only_torch_triton_and_the_standard_library(path):
    foreign = {n for n in imports(path) if n.split(".")[0] not in STDLIB | {"torch", "triton", "kernels"}}
    assert not foreign, f"{path.name} imports {foreign}"


@pytest.mark.parametrize("path", [p for p in modules("engine") if p.stem in MODEL | MODEL_CLIS], ids=lambda p: p.stem)
def test_the_model_imports_no_training_and_no_profiling(path):
    names = imports(path)
    assert not ours(names, "engine") & TRAINING, f"{path.name} imports training modules"
    assert not ours(names, "profiling") and "profiling" not in names, f"{path.name} imports profiling"


@pytest.mark.parametrize("path", [p for p in modules("engine") if p.stem in TRAINING], ids=lambda p: p.stem)
def test_training_imports_only_the_profiling_runtime(path):
    used = ours(imports(path), "profiling")
    assert used <= PROFILING_RUNTIME, f"{path.name} imports {used - PROFILING_RUNTIME} of profiling"


@pytest.mark.parametrize("path", [p for p in modules("profiling") if p.stem not in TOOLS], ids=lambda p: p.stem)
def test_profiling_knows_no_model_and_no_training(path):
    names = imports(path)
    assert ours(names, "engine") <= {"errors"}, f"{path.name} imports {ours(names, 'engine')} of engine"
    assert not any(n.split(".")[0] == "kernels" for n in names), f"{path.name} imports kernels"


@pytest.mark.parametrize("path", [p for p in modules("profiling") if p.stem in REPORT], ids=lambda p: p.stem)
def test_the_report_side_reads_runs_through_records_only(path):
    used = ours(imports(path), "profiling")
    allowed = REPORT | {"records", "stats"}
    assert used <= allowed, f"{path.name} imports {used - allowed} of profiling"


def test_the_report_starts_without_torch_or_the_model():
    code = (
        "import sys, profiling.report, profiling.analysis; "
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'kernels', 'FrEIA', 'engine')]; "
        "print(sorted(loaded))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['engine', 'engine.errors']"
