import random
from contextlib import contextmanager

import pytest
import torch

from profiling.runtime.probe import set_fp32_precision

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"  # on the CPU the kernels run in Triton's interpreter (tests/conftest.py)

# fp32 to 1e-5; half precisions against an fp32 reference fed the same rounded inputs, to their resolution.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def assert_close(actual, expected, dtype):
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(
        actual.float(), expected.float(), rtol=tol, atol=tol * max(1.0, expected.abs().max().item())
    )


@pytest.fixture(autouse=True)
def full_precision(fp32_precision_restored):
    """Compare against fp32 references with TF32 off (PyTorch enables it for convolutions on GPUs)."""
    for level in (torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul):
        set_fp32_precision(level, "ieee")


@pytest.fixture
def nan_allocations(monkeypatch):
    """torch.empty, torch.empty_strided and Tensor.new_empty filled with NaN: a GPU's caching allocator hands
    out recycled memory where a CPU's fresh allocations often come back zeroed, so an element that a kernel
    should write and does not shows up here as it would on a GPU."""

    def filled(allocate):
        def allocate_nan(*args, **kwargs):
            t = allocate(*args, **kwargs)
            return t.fill_(float("nan")) if t.is_floating_point() and t.device.type != "meta" else t

        return allocate_nan

    for owner, name in ((torch, "empty"), (torch, "empty_strided"), (torch.Tensor, "new_empty")):
        monkeypatch.setattr(owner, name, filled(getattr(owner, name)))


@contextmanager
def program_order(order, seed=0):
    """Triton's interpreter runs each launch's programs in `order`, "reversed" or "shuffled", rather than in
    grid order: a GPU runs them in any order and side by side, so no program may depend on another."""
    from triton.runtime.interpreter import interpreter_builder as builder

    set_dim, set_index = builder.set_grid_dim, builder.set_grid_idx
    grid, permutation = [1, 1, 1], []

    def set_grid_dim(nx, ny, nz):
        grid[:] = nx, ny, nz
        permutation[:] = range(nx * ny * nz)
        permutation.reverse() if order == "reversed" else random.Random(seed).shuffle(permutation)
        set_dim(nx, ny, nz)

    def set_grid_idx(x, y, z):
        i = permutation[(x * grid[1] + y) * grid[2] + z]
        set_index(i // (grid[1] * grid[2]), i // grid[2] % grid[1], i % grid[2])

    builder.set_grid_dim, builder.set_grid_idx = set_grid_dim, set_grid_idx
    try:
        yield
    finally:
        del builder.set_grid_dim, builder.set_grid_idx  # the class's own again
