"""The layers of the code, as folders, and their one-way dependencies, read from every import statement.

    kernels/ (torch, triton)  <-  engine.model, engine.data  <-  engine.evaluation  <-  engine.training
    engine.training  ->  profiling.runtime, profiling.records  (the run folder)  <-  profiling.report

A module's layer is its package prefix, so a new module is checked where it is put. The commands
(engine/train.py, ..., profiling/census.py, profiling.bench) sit on top and may use every layer.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import engine

REPO = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)

# layer -> the project's packages it may import (besides itself and engine.errors, which every layer shares)
MAY_IMPORT = {
    "kernels": set(),
    "engine.model": {"kernels"},
    "engine.data": set(),
    "engine.evaluation": {"engine.model", "engine.data"},
    "engine.training": {"kernels", "engine.model", "engine.data", "engine.evaluation", "profiling.runtime"},
    "profiling.runtime": set(),
    "profiling.report": set(),
}
SHARED = {
    "engine",
    "engine.errors",
    "engine.terminal",
    "profiling",
    "profiling.records",
    "profiling.stats",
}  # both sides
OURS = ("engine", "kernels", "profiling")


def module_name(path):
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources():
    return sorted(p for package in OURS for p in (REPO / package).rglob("*.py"))


def imports(path):
    """Every module `path` imports, dotted ('engine.model.irn', 'torch.nn', ...): `from a import b` gives a.b
    where b is a module of ours; relative imports are resolved; what the `engine` package exposes lazily
    (engine.build, `from engine import load`, ...) counts as an import of the module it comes from."""
    found, package = set(), module_name(path).rsplit(".", 1)[0] if path.stem != "__init__" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            found.add(module)
            if module.split(".")[0] in OURS:
                found |= {f"{module}.{a.name}" for a in node.names if is_module(f"{module}.{a.name}")}
            if module == "engine":
                found |= {engine._HOME[a.name] for a in node.names if a.name in engine._HOME}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "engine":
            found.add(engine._HOME.get(node.attr, f"engine.{node.attr}"))
    return found


def is_module(dotted):
    base = REPO.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def layer_of(dotted):
    """The layer a module of ours belongs to (its longest prefix in MAY_IMPORT), or None for commands and shared
    modules."""
    prefixes = [layer for layer in MAY_IMPORT if dotted == layer or dotted.startswith(layer + ".")]
    return max(prefixes, key=len, default=None)


LAYERED = [p for p in sources() if layer_of(module_name(p))]


@pytest.mark.parametrize("path", LAYERED, ids=lambda p: module_name(p))
def test_each_layer_imports_only_the_layers_below_it(path):
    layer = layer_of(module_name(path))
    allowed = MAY_IMPORT[layer] | {layer}
    ours = {n for n in imports(path) if n.split(".")[0] in OURS and n not in SHARED}
    foreign = {n for n in ours if not any(n == a or n.startswith(a + ".") for a in allowed)}
    assert not foreign, f"{module_name(path)} ({layer}) imports {sorted(foreign)}"


@pytest.mark.parametrize("path", sorted((REPO / "kernels").rglob("*.py")), ids=lambda p: p.stem)
def test_kernels_import_only_torch_triton_and_the_standard_library(path):
    foreign = {n for n in imports(path) if n.split(".")[0] not in STDLIB | {"torch", "triton", "kernels"}}
    assert not foreign, f"{path.name} imports {foreign}"


@pytest.mark.parametrize("path", [p for p in sources() if module_name(p) in SHARED], ids=lambda p: module_name(p))
def test_what_both_sides_share_needs_only_the_standard_library_and_rich(path):
    foreign = {n for n in imports(path) if n.split(".")[0] not in STDLIB | {"rich"} and n not in SHARED}
    assert not foreign, f"{module_name(path)} imports {foreign}"


def test_every_module_is_a_layer_a_command_or_shared():
    """A module outside the layers is a command (python -m ...) or one of the shared ones: nothing in between."""
    commands = {"engine.train", "engine.evaluate", "engine.rescale", "engine.replay", "profiling.census"}
    loose = {
        module_name(p)
        for p in sources()
        if not layer_of(module_name(p)) and module_name(p) not in SHARED | commands
        and not (module_name(p) == "profiling.bench" or module_name(p).startswith("profiling.bench."))
    }  # fmt: skip
    assert not loose, f"put these in a layer's folder, or list them as commands: {sorted(loose)}"


def test_the_report_starts_without_torch_or_the_model():
    code = (
        "import sys, profiling.report.__main__; "
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'kernels', 'FrEIA', 'engine')]; "
        "print(sorted(loaded))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['engine', 'engine.errors', 'engine.terminal']"


@pytest.mark.parametrize("path", sorted((REPO / "profiling" / "report").rglob("*.py")), ids=lambda p: p.stem)
def test_the_report_imports_no_torch(path):
    assert not {n for n in imports(path) if n.split(".")[0] in ("torch", "triton", "numpy")}, path.name
