"""Training crops: samples as functions of their index, the LR reference cropped with the HR, each rank's share,
and the batch layout."""

import itertools
import types

import numpy as np
import pytest
import torch

from engine.data import crops, image_files
from engine.data.imresize import imresize


def ramp_set(scale=2):
    img = np.arange(21 * 31 * 3, dtype=np.uint8).reshape(21, 31, 3)  # not a multiple of the scale
    return crops.training_set(image_files.ImageSet(["ramp.png"], [img], {}), scale)


def dihedral(patch):
    """The 8 flips and rotations of an HxWxC patch, made with numpy's rot90 and flip (the dihedral group)."""
    rotations = [np.rot90(patch, k) for k in range(4)]
    return rotations + [np.flip(r, axis=1) for r in rotations]


def which_of(images, patch):
    """The index of `patch` among `images` (exactly one matches a patch with no symmetry of its own)."""
    found = [i for i, image in enumerate(images) if image.shape == patch.shape and np.array_equal(image, patch)]
    assert len(found) == 1, found
    return found[0]


def test_samples_are_deterministic_per_index_and_augmented():
    found = ramp_set()
    ds = crops.CropDataset(found, 8, seed=1, scale=2)
    a, b = ds[5], ds[5]
    assert torch.equal(a["hr"], b["hr"]) and a["hr"].shape == (3, 8, 8) and a["hr"].dtype == torch.uint8
    assert torch.equal(a["noise"], b["noise"]) and a["noise"].shape == (9, 4, 4)
    assert not torch.equal(ds[6]["noise"], a["noise"])
    assert not torch.equal(crops.CropDataset(found, 8, seed=2, scale=2)[5]["hr"], a["hr"])
    # every sample is one of its crop's 8 flips and rotations, the 8 codes give the 8 of them, the LR the same
    seen = set()
    for sample in (ds[i] for i in range(64)):
        top, left, _, _ = sample["box"].tolist()
        hr = sample["hr"].numpy().transpose(1, 2, 0)
        lr = sample["lr_ref"].numpy().transpose(1, 2, 0)
        which = which_of(dihedral(found.hrs[0][top : top + 8, left : left + 8]), hr)
        assert which == which_of(dihedral(found.lrs[0][top // 2 : top // 2 + 4, left // 2 : left // 2 + 4]), lr)
        seen.add((sample["aug"], which))
    # 8 codes giving 8 different transforms, one each: a code that repeated another's would leave one unseen
    assert len(seen) == 8 and len({aug for aug, _ in seen}) == 8 and len({which for _, which in seen}) == 8


def test_the_lr_reference_is_the_whole_image_s_official_bicubic_cropped_with_the_hr():
    """As the official pipeline: imresize of the whole (scale-cropped) image, crops aligned to the scale,
    the same flip/rotation on both; not torch's bicubic of the crop, which differs along its border."""
    found = ramp_set(scale=2)
    assert found.hrs[0].shape == (20, 30, 3) and found.lrs[0].shape == (10, 15, 3)
    whole = imresize(found.hrs[0], 2)
    for sample in (crops.CropDataset(found, 8, seed=3, scale=2)[i] for i in range(20)):
        top, left, _, _ = sample["box"].tolist()
        assert top % 2 == 0 and left % 2 == 0
        lr = sample["lr_ref"].numpy().transpose(1, 2, 0)
        assert any(np.array_equal(lr, d) for d in dihedral(whole[top // 2 : top // 2 + 4, left // 2 : left // 2 + 4]))
    assert sample["lr_ref"].dtype == torch.float32


def test_ranks_split_each_global_batch_and_together_see_one_process_s_samples():
    one = crops.RankSamples(start=12, global_batch=4, rank=0, per_rank=4)
    two = [crops.RankSamples(12, 4, rank, 2) for rank in (0, 1)]

    def take(sampler, n):
        return list(itertools.islice(iter(sampler), n))

    assert take(one, 8) == list(range(12, 20))
    assert take(two[0], 4) == [12, 13, 16, 17] and take(two[1], 4) == [14, 15, 18, 19]


@pytest.mark.parametrize("codec", ["none", "jpeg"])
def test_the_loader_s_batches_have_the_batch_layout_the_census_and_benches_use(codec):
    cfg = types.SimpleNamespace(batch_size=3, crop=8, scale=2, seed=0, workers=0, codec=codec, codec_quality=[90])
    batch = next(iter(crops.loader(ramp_set(), cfg, start_sample=0)))
    layout = crops.batch_layout(3, 8, 2, codec=codec != "none")
    assert set(batch) == set(layout)
    for key, (shape, dtype) in layout.items():
        assert (tuple(batch[key].shape), batch[key].dtype) == (shape, dtype), key
    assert crops.empty_batch(3, 8, 2, codec=codec != "none").keys() == layout.keys()
    if codec == "none":
        assert {k: (tuple(v.shape), v.dtype) for k, v in crops.random_batch(3, 8, 2).items()} == layout


def test_a_sample_s_codec_quality_is_drawn_from_its_range_after_its_other_draws():
    found = ramp_set()
    plain = crops.CropDataset(found, 8, seed=1, scale=2)
    fixed, ranged = (crops.CropDataset(found, 8, seed=1, scale=2, qualities=q) for q in ((90,), (30, 34)))
    assert "quality" not in plain[0] and {fixed[i]["quality"] for i in range(20)} == {90}
    drawn = [ranged[i]["quality"] for i in range(200)]
    assert set(drawn) == {30, 31, 32, 33, 34} and drawn == [ranged[i]["quality"] for i in range(200)]
    for key in ("hr", "lr_ref", "noise", "box"):  # a codec leaves the rest of the sample as it was
        assert torch.equal(ranged[7][key], plain[7][key]), key


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_the_noise_has_as_many_channels_as_the_network_s_z(scale):
    import engine

    assert crops.z_channels(scale) == engine.build(scale, blocks_per_stage=1, growth=4).z_channels()
