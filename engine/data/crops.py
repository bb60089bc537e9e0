"""Training data: HR images decoded once into memory, their LR references, random augmented crops.

As the official pipeline does, the LR reference of a training image is MATLAB's bicubic downscaling of
the whole image (engine/data/imresize.py), made once at load and kept in memory beside the HR (uint8) as
float32; a crop is drawn in LR pixels, the HR crop is the same area at `scale` times the size, and both
get the same flip/rotation. Sample g of a run (g counts over the global batch: step * batch +
position) is a pure function of (seed, g): its image, crop box, flip/rotation, the z noise of its
backward pass and, under a codec, the quality its LR is compressed at. So the data a run sees does not
depend on workers, on resumption, or on how many ranks share the batch.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from engine.data import image_files
from engine.data.codec import draw_quality
from engine.data.imresize import imresize
from engine.data.tensors import cropped_to


@dataclass
class TrainingSet:
    names: list
    hrs: list  # HxWx3 uint8, H and W multiples of the scale
    lrs: list  # (H/s)x(W/s)x3 float32: the LR reference of the whole image, neither rounded nor clipped
    skipped: dict = field(default_factory=dict)  # as ImageSet's
    converted: dict = field(default_factory=dict)


def training_set(found, scale):
    """The images cropped to multiples of the scale, each with its LR reference (MATLAB bicubic)."""
    pairs = [training_pair(img, scale) for img in found.images]
    return TrainingSet(found.names, [hr for hr, _ in pairs], [lr for _, lr in pairs], found.skipped, found.converted)


def training_pair(img, scale):
    """An image cropped to multiples of the scale, and its LR reference."""
    hr = np.ascontiguousarray(cropped_to(img, scale))
    return hr, imresize(hr, scale)


@dataclass(frozen=True)
class Decoded:
    """The sets decoded into memory (no data cache): image_files.read_folder's readers, as the cache's."""

    scale: int

    def images(self, paths, min_size=1):
        return image_files.read_images(paths, min_size)

    def training(self, paths, min_size=1):
        return training_set(image_files.read_images(paths, min_size), self.scale)


class CropDataset(torch.utils.data.Dataset):
    """Sample g: a random image, crop box, flip/rotation and z noise (and with `qualities`, one codec quality or
    LOW,HIGH, its LR's quality), all drawn from rng(seed, g)."""

    def __init__(self, data, crop, seed, scale, qualities=None):
        self.data, self.crop, self.seed, self.scale, self.qualities = data, crop, seed, scale, qualities
        self.z_shape = (z_channels(scale), crop // scale, crop // scale)

    def __len__(self):
        return 2**62  # indexed by the global sample number; the sampler decides where to start

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, index])
        image = int(rng.integers(len(self.data.hrs)))
        lr_image, side = self.data.lrs[image], self.crop // self.scale
        top, left = int(rng.integers(lr_image.shape[0] - side + 1)), int(rng.integers(lr_image.shape[1] - side + 1))
        aug = int(rng.integers(8))  # bit 0: h-flip, bit 1: v-flip, bit 2: transpose (with flips: the 8 rotations)
        s = self.scale
        hr = augment(self.data.hrs[image][s * top : s * (top + side), s * left : s * (left + side)], aug)
        lr = augment(lr_image[top : top + side, left : left + side], aug)
        sample = {  # copies: the arrays may be a read-only mapping shared by the node's ranks
            "hr": torch.from_numpy(np.array(hr.transpose(2, 0, 1), order="C")),
            "lr_ref": torch.from_numpy(np.array(lr.transpose(2, 0, 1), order="C")),
            "noise": torch.from_numpy(rng.standard_normal(self.z_shape, dtype=np.float32)),
            "image": image,
            "box": torch.tensor([s * top, s * left, self.crop, self.crop]),
            "aug": aug,
        }
        if self.qualities:  # drawn last: the draws before it are those of a run without a codec
            sample["quality"] = draw_quality(rng, self.qualities)
        return sample


def augment(patch, code):
    if code & 1:
        patch = patch[:, ::-1]
    if code & 2:
        patch = patch[::-1]
    if code & 4:
        patch = patch.transpose(1, 0, 2)
    return patch


class RankSamples(torch.utils.data.Sampler):
    """This rank's share of every global batch, the first starting at sample `start`, forever."""

    def __init__(self, start, global_batch, rank, per_rank):
        self.start, self.global_batch, self.rank, self.per_rank = start, global_batch, rank, per_rank

    def __iter__(self):
        first = self.start + self.rank * self.per_rank
        while True:
            yield from range(first, first + self.per_rank)
            first += self.global_batch


def loader(data, cfg, start_sample, rank=0, world=1, pin_memory=False, worker_init_fn=None):
    """Batches of this rank's share of the global sample stream, from global sample `start_sample` on."""
    per_rank = cfg.batch_size // world
    return torch.utils.data.DataLoader(
        CropDataset(data, cfg.crop, cfg.seed, cfg.scale, codec_qualities(cfg)),
        batch_size=per_rank,
        sampler=RankSamples(start_sample, cfg.batch_size, rank, per_rank),
        num_workers=cfg.workers,
        pin_memory=pin_memory,
        persistent_workers=cfg.workers > 0,
        prefetch_factor=4 if cfg.workers > 0 else None,
        worker_init_fn=worker_init_fn,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the loader off the global RNG
    )


def codec_qualities(cfg):
    """The codec qualities a run's samples draw theirs from (None: the run has no codec)."""
    return tuple(cfg.codec_quality) if cfg.codec != "none" else None


def z_channels(scale):
    """Channels of IRN's latent z at `scale`: the 3 * scale^2 values of each LR pixel's block, less the LR's 3."""
    return 3 * (scale**2 - 1)


def batch_layout(batch_size, crop, scale, codec=False):
    """{key: (shape, dtype)} of a training batch as the loader collates it: the HR crops (uint8), their LR
    references, the z noise of the backward pass, where each sample came from (its image's index, its
    crop box as (top, left, h, w) in HR pixels, its flip/rotation code) and, with a `codec`, each LR's quality."""
    side = crop // scale
    layout = {
        "hr": ((batch_size, 3, crop, crop), torch.uint8),
        "lr_ref": ((batch_size, 3, side, side), torch.float32),
        "noise": ((batch_size, z_channels(scale), side, side), torch.float32),
        "image": ((batch_size,), torch.int64),
        "box": ((batch_size, 4), torch.int64),
        "aug": ((batch_size,), torch.int64),
    }
    return layout | ({"quality": ((batch_size,), torch.int64)} if codec else {})


def empty_batch(batch_size, crop, scale, codec=False):
    """A batch of the loader's layout with no values (for counting a step on fake tensors)."""
    layout = batch_layout(batch_size, crop, scale, codec)
    return {key: torch.empty(shape, dtype=dtype) for key, (shape, dtype) in layout.items()}


def random_batch(batch_size, crop, scale, generator=None):
    """A batch of the loader's layout with random values (for benchmarks): uniform HR bytes and LR
    references, standard normal noise, every sample from image 0."""
    fill = {
        "hr": lambda shape: torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator),
        "lr_ref": lambda shape: torch.rand(shape, generator=generator),
        "noise": lambda shape: torch.randn(shape, generator=generator),
    }
    return {
        key: fill[key](shape) if key in fill else torch.zeros(shape, dtype=dtype)
        for key, (shape, dtype) in batch_layout(batch_size, crop, scale).items()
    }
