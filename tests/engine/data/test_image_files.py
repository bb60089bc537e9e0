"""Image files read into uint8 arrays: the embedded photographs, conversions, skips and one-line errors."""

import numpy as np
import pytest
from PIL import Image

from engine.data import image_files
from engine.errors import UserError


def test_embedded_images_are_natural_rgb_photographs():
    train, held_out = image_files.embedded("train"), image_files.embedded("held_out")
    assert len(train.images) >= 5 and len(held_out.images) >= 2
    assert not set(train.names) & set(held_out.names)
    assert all(img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 for img in train.images + held_out.images)


def test_folder_conversions_and_skips(tmp_path):
    rgb = np.full((40, 40, 3), 100, np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 40), 255, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(np.full((40, 40), 300 * 257 // 2, np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(rgb[:10, :10]).save(tmp_path / "tiny.png")
    (tmp_path / "notes.txt").write_text("not an image")
    good = (tmp_path / "rgb.png").read_bytes()
    (tmp_path / "broken.png").write_bytes(good[: len(good) // 3])
    (tmp_path / "garbage.jpg").write_bytes(b"\x00" * 100)
    found = image_files.read_folder(tmp_path, min_size=32)
    assert sorted(found.names) == ["deep.png", "gray.png", "rgb.png", "rgba.png"]
    assert all(img.shape == (40, 40, 3) and img.dtype == np.uint8 for img in found.images)
    assert found.images[found.names.index("gray.png")][0, 0].tolist() == [100, 100, 100]
    assert found.images[found.names.index("deep.png")][0, 0, 0] == round(300 * 257 // 2 / 65535 * 255)
    assert sorted(found.skipped["corrupt or unreadable"]) == ["broken.png", "garbage.jpg"]
    assert found.skipped["smaller than 32x32"] == ["tiny.png"]
    assert found.skipped["not an image file"] == ["notes.txt"]
    assert found.converted == {"I;16": ["deep.png"], "L": ["gray.png"], "RGBA": ["rgba.png"]}


def test_an_image_past_pillow_s_decompression_bomb_limit_is_skipped_with_that_reason(tmp_path, monkeypatch):
    """Pillow refuses images over twice its MAX_IMAGE_PIXELS (about 179 megapixels by default); with the limit
    lowered, a 40x40 photograph is such an image and its real DecompressionBombError is what is met."""
    Image.fromarray(np.full((40, 40, 3), 7, np.uint8)).save(tmp_path / "huge.png")
    Image.fromarray(np.full((10, 10, 3), 7, np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # 40x40 = 1600 > 2 x 400; 10x10 is under it
    found = image_files.read_folder(tmp_path)
    assert found.names == ["small.png"] and found.skipped == {"over Pillow's limit of 0 megapixels": ["huge.png"]}
    with pytest.raises(UserError, match="cannot read .*huge.png as an image \\(over Pillow's limit"):
        image_files.to_rgb8_or_refuse(tmp_path / "huge.png")


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="no folder"):
        image_files.read_folder(tmp_path / "missing")
    with pytest.raises(UserError, match="is empty"):
        image_files.read_folder(tmp_path)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(UserError, match="no usable images.*smaller than 144x144: small.png"):
        image_files.read_folder(tmp_path, min_size=144)
