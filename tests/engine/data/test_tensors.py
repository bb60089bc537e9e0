"""Images as tensors: the bicubic shown beside IRN's LR."""

import torch

from engine.data import tensors


def test_bicubic_reference_is_antialiased_and_sized():
    hr = torch.rand(2, 3, 16, 24)
    lr = tensors.bicubic_down(hr, 4)
    assert lr.shape == (2, 3, 4, 6)
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(tensors.bicubic_down(flat, 4), torch.full((1, 3, 4, 4), 0.3), atol=1e-6)
