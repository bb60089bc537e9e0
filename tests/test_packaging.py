"""The distribution as users install it: every package in the wheel, the configs inside it, and the main job
and the report running from the installed wheel alone, in a folder unrelated to the source tree."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_the_build():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(p.parent.relative_to(REPO).parts)
        for top in ("engine", "kernels", "profiling")
        for p in (REPO / top).rglob("__init__.py")
    }
    assert listed == folders | {"engine.configs"}


def test_the_wheel_carries_its_configs_and_runs_the_demo_and_the_report_elsewhere(tmp_path):
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, REPO], check=True)
    subprocess.run([*pip, "install", "--no-deps", "--target", site, *wheels.glob("*.whl")], check=True)
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed wheel, before any editable install

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True)

    where = run("-c", "import engine.training.config as c; print(c.CONFIG_DIR)")
    assert Path(where.stdout.strip()) == site / "engine" / "configs", where.stderr
    trained = run("-m", "engine.train", "--steps", "2", "--crop", "16", "--name", "from_the_wheel")
    assert trained.returncode == 0, trained.stderr
    report = run("-m", "profiling.report", "from_the_wheel")
    assert report.returncode == 0 and "the training step, by phase" in report.stdout, report.stderr
