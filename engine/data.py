"""Training data: HR images decoded once into memory, their LR references, random augmented crops.

As the official pipeline does, the LR reference of a training image is MATLAB's bicubic downscaling of
the whole image (engine/imresize.py), made once at load and kept in memory beside the HR (uint8) as
float32; a crop is drawn in LR pixels, the HR crop is the same area at `scale` times the size, and both
get the same flip/rotation. Sample g of a run (g counts over the global batch: step * batch +
position) is a pure function of (seed, g): its image, crop box, flip/rotation and the z noise of its
backward pass. So the data a run sees does not depend on workers, on resumption, or on how many ranks
share the batch.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from engine.errors import UserError
from engine.imresize import imresize

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}
EMBEDDED_TRAIN = [
    "astronaut.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
]
EMBEDDED_HELD_OUT = ["chelsea.png", "coffee.png"]


@dataclass
class ImageSet:
    names: list  # file names, for recording where a sample came from
    images: list  # HxWx3 uint8 arrays
    skipped: dict  # reason -> list of names


@dataclass
class TrainingSet:
    names: list
    hrs: list  # HxWx3 uint8, H and W multiples of the scale
    lrs: list  # (H/s)x(W/s)x3 float32: the LR reference of the whole image, neither rounded nor clipped


def training_set(found, scale):
    """The images cropped to multiples of the scale, each with its LR reference (MATLAB bicubic)."""
    hrs = [np.ascontiguousarray(cropped_to(img, scale)) for img in found.images]
    return TrainingSet(found.names, hrs, [imresize(hr, scale) for hr in hrs])


def embedded_dir():
    import skimage.data

    return Path(skimage.data.__file__).parent


def embedded(split):
    """The natural photographs shipped inside scikit-image's wheel: 'train' or 'held_out'."""
    names = EMBEDDED_TRAIN if split == "train" else EMBEDDED_HELD_OUT
    return read_images([embedded_dir() / n for n in names])


def find_images(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"no folder at {folder}; give a folder of HR images, e.g. DIV2K/DIV2K_train_HR")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise UserError(f"{folder} is empty; put HR images (.png, .jpg) in it")
    return files


def read_folder(folder, min_size=1):
    """Decode every image under `folder`; skip (and count) what is not a usable image."""
    files = find_images(folder)
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    found = read_images(images, min_size)
    if len(files) > len(images):
        found.skipped["not an image file"] = [f.name for f in files if f.suffix.lower() not in IMAGE_SUFFIXES]
    if not found.images:
        raise UserError(
            f"no usable images in {folder} ({describe_skipped(found.skipped)}); "
            f"give a folder of RGB images at least {min_size}x{min_size}"
        )
    return found


def read_images(paths, min_size=1):
    names, images, skipped = [], [], {}
    for path in paths:
        try:
            img = to_rgb8(path)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            skipped.setdefault("corrupt or unreadable", []).append(Path(path).name)
            continue
        if min(img.shape[:2]) < min_size:
            skipped.setdefault(f"smaller than {min_size}x{min_size}", []).append(Path(path).name)
            continue
        names.append(Path(path).name)
        images.append(img)
    return ImageSet(names, images, skipped)


def to_rgb8(path):
    """Any PIL-readable image as HxWx3 uint8: grayscale and RGBA converted, 16-bit scaled down."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                scale = 65535.0 if arr.max() > 255 else 255.0
                return np.repeat(np.round(arr / scale * 255).astype(np.uint8)[..., None], 3, axis=2)
            arr = np.asarray(img.convert("RGB"))
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError("not an RGB image")
    return np.ascontiguousarray(arr)


def describe_skipped(skipped):
    return (
        "; ".join(
            f"{len(v)} {reason}: {', '.join(v[:3])}{'...' if len(v) > 3 else ''}" for reason, v in skipped.items()
        )
        or "none skipped"
    )


class CropDataset(torch.utils.data.Dataset):
    """Sample g: a random image, crop box, flip/rotation and z noise, all drawn from rng(seed, g)."""

    def __init__(self, data, crop, seed, scale):
        self.data, self.crop, self.seed, self.scale = data, crop, seed, scale
        self.z_shape = (3 * (scale**2 - 1), crop // scale, crop // scale)

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
        return {  # copies: the arrays may be a read-only mapping shared by the node's ranks
            "hr": torch.from_numpy(np.array(hr.transpose(2, 0, 1), order="C")),
            "lr_ref": torch.from_numpy(np.array(lr.transpose(2, 0, 1), order="C")),
            "noise": torch.from_numpy(rng.standard_normal(self.z_shape, dtype=np.float32)),
            "image": image,
            "box": torch.tensor([s * top, s * left, self.crop, self.crop]),
            "aug": aug,
        }


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
    per_rank = cfg["batch_size"] // world
    return torch.utils.data.DataLoader(
        CropDataset(data, cfg["crop"], cfg["seed"], cfg["scale"]),
        batch_size=per_rank,
        sampler=RankSamples(start_sample, cfg["batch_size"], rank, per_rank),
        num_workers=cfg["workers"],
        pin_memory=pin_memory,
        persistent_workers=cfg["workers"] > 0,
        prefetch_factor=4 if cfg["workers"] > 0 else None,
        worker_init_fn=worker_init_fn,
        generator=torch.Generator().manual_seed(cfg["seed"]),  # keeps the loader off the global RNG
    )


def to_float(batch_u8):
    """uint8 (B,3,H,W) on any device -> float in [0, 1]."""
    return batch_u8.float().div_(255)


def bicubic_down(hr, scale):
    """Antialiased bicubic (a = -0.5) on the device: MATLAB's imresize inside the image, renormalised at
    its border; for images shown beside IRN's LR. The training LR reference is engine/imresize.py's."""
    return F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)


def lr_reference(img, scale):
    """The official LR reference of a whole HxWx3 uint8 image (cropped to multiples of the scale) as a
    (1,3,h,w) float tensor: MATLAB bicubic, neither rounded nor clipped."""
    return torch.from_numpy(np.ascontiguousarray(imresize(cropped_to(img, scale), scale).transpose(2, 0, 1)))[None]


def image_tensor(img, multiple):
    """A full HxWx3 uint8 image as a (1,3,H',W') float tensor, cropped to multiples of `multiple`."""
    return to_float(torch.from_numpy(np.ascontiguousarray(cropped_to(img, multiple).transpose(2, 0, 1)))[None])


def cropped_to(img, multiple):
    """An HxWx3 image's top-left part whose sides are multiples of `multiple` (a view)."""
    h, w = (s - s % multiple for s in img.shape[:2])
    return img[:h, :w]
