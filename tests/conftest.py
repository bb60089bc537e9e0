import os

import torch

# Triton kernels run in its interpreter on machines without CUDA; it must be set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
