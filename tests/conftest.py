import dataclasses
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from profiling.runtime.probe import set_fp32_precision

# Triton kernels run in its interpreter on machines without CUDA; it must be set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="session")
def interpreter_without_overflow_checks():
    """The interpreter checks every int32 add, subtract and multiply of a kernel for overflow, a large share
    of its time (compare a kernel test with and without this fixture). The tests' tensors are far too small
    for an offset to near 2**31; the launchers' int32 guards are tested on meta tensors at the sizes where it
    would (tests/kernels)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    from triton.runtime.interpreter import interpreter_builder as builder

    checked = builder.options
    builder.options = dataclasses.replace(checked, sanitize_overflow=False)
    yield
    builder.options = checked


# A tiny network and recipe so that a training run takes a second or two on a CPU.

TINY = [
    "--scale",
    "2",
    "--blocks-per-stage",
    "1",
    "--growth",
    "4",
    "--crop",
    "16",
    "--batch-size",
    "2",
    "--workers",
    "0",
    "--val-every",
    "1000",
    "--lr-milestones",
    "1000",
]


def smooth_image(rng, h, w):
    """A natural-ish image: smooth colour gradients plus a little noise."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(3 * x + rng.uniform(0, 6)), np.cos(2 * y + rng.uniform(0, 6)), np.sin(2 * (x + y))], -1)
    img = 0.5 + 0.4 * base + 0.03 * rng.standard_normal((h, w, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(autouse=True, scope="session")
def data_cache_kept_in_the_session_s_folder(tmp_path_factory):
    """Runs (and the torchrun ranks they start) put the default data cache under the session's temporary
    folder, not the user's ~/.cache."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("user_cache"))
    yield
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "hr"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(smooth_image(rng, 40 + 8 * i, 48)).save(folder / ("sub" if i else ".") / f"img{i}.png")
    return folder


@pytest.fixture
def fp32_precision_restored():
    """Puts back every level of PyTorch's per-op TF32 setting that a test changes, parents first, each as
    its getter read it (deferring to its parent where it did)."""
    cudnn = torch.backends.cudnn
    levels = (torch.backends, cudnn, cudnn.conv, cudnn.rnn, torch.backends.cuda.matmul)
    saved = [(level, level.fp32_precision) for level in levels]
    yield
    for level, value in saved:
        set_fp32_precision(level, value)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def immutable():
    """Makes a folder immutable (chattr +i: a real EPERM from the kernel for every write, root's too), and
    undoes it afterwards; skips where chattr cannot."""
    made = []

    def make(folder):
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("chattr +i is not permitted here")
        made.append(folder)

    yield make
    for folder in made:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
