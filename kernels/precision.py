"""Whether fp32 convolutions may use TF32, as PyTorch's cuDNN convolutions decide it.

PyTorch has two ways to set this: the legacy flag `torch.backends.cudnn.allow_tf32`, which covers every
cuDNN op at once, and the per-op `torch.backends.cudnn.conv.fp32_precision` ("tf32", "ieee", or "none",
which defers to `torch.backends.cudnn.fp32_precision` and then to `torch.backends.fp32_precision`;
reading it returns the value after that deferral). Setting the legacy flag sets the per-op values of
convolutions and RNNs; setting a per-op value leaves the legacy flag alone. Once convolutions and RNNs
differ (`conv.fp32_precision = "ieee"` alone does it), reading the legacy flag raises a RuntimeError
("a mix of the legacy and new APIs"), so the setting is read through the per-op API, which every
supported torch has and which never raises.
"""

import torch


def tf32_convolutions():
    """Whether fp32 convolutions may use TF32: what cuDNN's convolutions follow, so the fused ones too."""
    return torch.backends.cudnn.conv.fp32_precision == "tf32"
