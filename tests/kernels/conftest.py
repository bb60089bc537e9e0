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
