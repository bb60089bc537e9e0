import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data import crops, image_files, tensors
from engine.data.imresize import imresize
from engine.errors import UserError


def test_embedded_images_are_natural_rgb_photographs():
    train, held_out = image_files.embedded("train"), image_files.embedded("held_out")
    assert len(train.images) >= 5 and len(held_out.images) >= 2
    assert not set(train.names) & set(held_out.names)
    assert all(img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 for img in train.images + held_out.images)


def ramp_set(scale=2):
    img = np.arange(21 * 31 * 3, dtype=np.uint8).reshape(21, 31, 3)  # not a multiple of the scale
    return crops.training_set(image_files.ImageSet(["ramp.png"], [img], {}), scale)


def test_samples_are_deterministic_per_index_and_augmented():
    found = ramp_set()
    ds = crops.CropDataset(found, 8, seed=1, scale=2)
    a, b = ds[5], ds[5]
    assert torch.equal(a["hr"], b["hr"]) and a["hr"].shape == (3, 8, 8) and a["hr"].dtype == torch.uint8
    assert torch.equal(a["noise"], b["noise"]) and a["noise"].shape == (9, 4, 4)
    assert not torch.equal(ds[6]["noise"], a["noise"])
    assert not torch.equal(crops.CropDataset(found, 8, seed=2, scale=2)[5]["hr"], a["hr"])
    top, left, _, _ = a["box"].tolist()
    raw = found.hrs[0][top : top + 8, left : left + 8]
    assert np.array_equal(a["hr"].numpy().transpose(1, 2, 0), crops.augment(raw, a["aug"]))
    assert len({ds[i]["aug"] for i in range(64)}) == 8


def test_the_lr_reference_is_the_whole_image_s_official_bicubic_cropped_with_the_hr():
    """As the official pipeline: imresize of the whole (scale-cropped) image, crops aligned to the scale,
    the same flip/rotation on both; not torch's bicubic of the crop, which differs along its border."""
    found = ramp_set(scale=2)
    assert found.hrs[0].shape == (20, 30, 3) and found.lrs[0].shape == (10, 15, 3)
    whole = imresize(found.hrs[0], 2)
    for sample in (crops.CropDataset(found, 8, seed=3, scale=2)[i] for i in range(20)):
        top, left, _, _ = sample["box"].tolist()
        assert top % 2 == 0 and left % 2 == 0
        expected = crops.augment(whole[top // 2 : top // 2 + 4, left // 2 : left // 2 + 4], sample["aug"])
        assert np.array_equal(sample["lr_ref"].numpy().transpose(1, 2, 0), expected)
    assert sample["lr_ref"].dtype == torch.float32


def test_ranks_split_each_global_batch_and_together_see_one_process_s_samples():
    one = crops.RankSamples(start=12, global_batch=4, rank=0, per_rank=4)
    two = [crops.RankSamples(12, 4, rank, 2) for rank in (0, 1)]

    def take(sampler, n):
        return list(itertools.islice(iter(sampler), n))

    assert take(one, 8) == list(range(12, 20))
    assert take(two[0], 4) == [12, 13, 16, 17] and take(two[1], 4) == [14, 15, 18, 19]


def test_bicubic_reference_is_antialiased_and_sized():
    hr = torch.rand(2, 3, 16, 24)
    lr = tensors.bicubic_down(hr, 4)
    assert lr.shape == (2, 3, 4, 6)
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(tensors.bicubic_down(flat, 4), torch.full((1, 3, 4, 4), 0.3), atol=1e-6)


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


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="no folder"):
        image_files.read_folder(tmp_path / "missing")
    with pytest.raises(UserError, match="is empty"):
        image_files.read_folder(tmp_path)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(UserError, match="no usable images.*smaller than 144x144: small.png"):
        image_files.read_folder(tmp_path, min_size=144)
