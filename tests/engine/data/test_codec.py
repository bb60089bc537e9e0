"""The codec stage against Pillow's own encode and decode of the 8-bit LR, written to files and read back."""

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data import codec
from tests.conftest import smooth_image


def lr_batch(n=3, h=20, w=28):
    rng = np.random.default_rng(0)
    return torch.stack([torch.from_numpy(smooth_image(rng, h, w).transpose(2, 0, 1)) for _ in range(n)]).float() / 255


def pillow_round_trip(image_u8, fmt, quality, path):
    """What Pillow makes of an 8-bit image saved as a file at `quality` and opened again, and the file's size."""
    Image.fromarray(image_u8).save(path, format=fmt, quality=quality)
    with Image.open(path) as decoded:
        return np.asarray(decoded.convert("RGB")), path.stat().st_size


@pytest.mark.parametrize("name, fmt", [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_each_image_is_pillow_s_encode_and_decode_at_its_own_quality_bit_for_bit(tmp_path, name, fmt):
    lr, qualities = lr_batch(), [30, 75, 95]
    received, n_bytes = codec.compress(lr, name, torch.tensor(qualities))
    for i, q in enumerate(qualities):
        image = (lr[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        expected, size = pillow_round_trip(image, fmt, q, tmp_path / f"{i}.{name}")
        assert np.array_equal((received[i] * 255).round().byte().permute(1, 2, 0).numpy(), expected)
        assert torch.equal(received[i] * 255, (received[i] * 255).round())  # on the 8-bit grid, exactly
        assert n_bytes[i].item() == size
    assert not torch.equal(received[0], received[2])  # qualities differ, so do the decodes


def test_a_value_between_8_bit_levels_is_rounded_to_the_nearest_before_encoding(tmp_path):
    lr = lr_batch(1)
    off_grid = (lr + 0.4 / 255).clamp(0, 1)  # rounds back to the same bytes
    assert torch.equal(codec.compress(off_grid, "jpeg", 90)[0], codec.compress(lr, "jpeg", 90)[0])


def test_the_gradient_passes_straight_through():
    lr = lr_batch(2).requires_grad_()
    weights = torch.randn(lr.shape, generator=torch.Generator().manual_seed(1))
    received, _ = codec.compress(lr, "jpeg", 50)
    (received * weights).sum().backward()
    assert torch.equal(lr.grad, weights)


def test_bits_per_pixel_count_the_encoded_file_over_the_hr_pixels(tmp_path):
    lr = lr_batch(1, 24, 32)
    _, n_bytes = codec.compress(lr, "jpeg", 90)
    image = (lr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    _, size = pillow_round_trip(image, "JPEG", 90, tmp_path / "lr.jpg")
    # an x2 LR of 24x32 stands for a 48x64 HR: the file's bits over 3072 HR pixels
    assert codec.bits_per_pixel(n_bytes.item(), 48 * 64) == size * 8 / 3072


def test_a_codec_on_fake_tensors_gives_the_shapes_a_census_counts():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        lr = torch.empty(4, 3, 9, 7)
        received, n_bytes = codec.compress(lr, "webp", torch.empty(4, dtype=torch.int64))
    assert received.shape == lr.shape and n_bytes.shape == (4,) and n_bytes.dtype == torch.int64
