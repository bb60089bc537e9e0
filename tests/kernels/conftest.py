import pytest
import torch

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
def full_precision():
    """Compare against fp32 references with TF32 off (PyTorch enables it for convolutions on GPUs), set and
    restored through the per-op API (the legacy flags raise on reading once the two APIs are mixed)."""
    levels = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
    previous = [level.fp32_precision for level in levels]
    for level in levels:
        level.fp32_precision = "ieee"
    yield
    for level, value in zip(levels, previous, strict=True):
        level.fp32_precision = value
