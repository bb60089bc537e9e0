"""Image files: HR images read from folders into HxWx3 uint8 arrays (converted, or skipped and counted), the
embedded photographs, and 8-bit PNGs written from float tensors."""

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.errors import UserError

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


UNREADABLE = "corrupt or unreadable"


@dataclass
class ImageSet:
    names: list  # file names, for recording where a sample came from
    images: list  # HxWx3 uint8 arrays
    skipped: dict  # reason -> list of names
    converted: dict = field(default_factory=dict)  # the mode an image was converted from -> list of names

    def add(self, name, image, mode, min_size):
        """An image decoded by `decode` joins the set, or is skipped and counted: `mode` is the mode it was
        converted from, or for an image that could not be decoded (None) why."""
        why = (mode or UNREADABLE) if image is None else unusable(image.shape, min_size)
        if why:
            self.skipped.setdefault(why, []).append(name)
            return False
        self.names.append(name)
        self.images.append(image)
        if mode:
            self.converted.setdefault(mode, []).append(name)
        return True


def unusable(shape, min_size):
    """Why an image of `shape` (None: it could not be decoded) is skipped, or None when it is used."""
    if shape is None:
        return UNREADABLE
    if min(shape[:2]) < min_size:
        return f"smaller than {min_size}x{min_size}"
    return None


def embedded_dir():
    import skimage.data

    return Path(skimage.data.__file__).parent


def embedded(split, min_size=1, read=None):
    """The natural photographs shipped inside scikit-image's wheel: 'train' or 'held_out', those at least
    `min_size` on each side (a UserError, before any decoding, when none is); `read` as read_folder's."""
    paths = [embedded_dir() / n for n in (EMBEDDED_TRAIN if split == "train" else EMBEDDED_HELD_OUT)]
    largest = max(shorter_side(path) for path in paths)
    if largest < min_size:
        raise UserError(
            f"no embedded photograph is {min_size}x{min_size} or larger (the largest is {largest} on its shorter "
            "side); lower --crop, or give your own images with --data"
        )
    return (read or read_images)(paths, min_size)


def shorter_side(path):
    with Image.open(path) as img:  # reads the header alone
        return min(img.size)


def find_images(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"no folder at {folder}; give a folder of HR images, e.g. DIV2K/DIV2K_train_HR")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise UserError(f"{folder} is empty; put HR images (.png, .jpg) in it")
    return files


def read_folder(folder, min_size=1, read=None):
    """Decode every image under `folder`; skip (and count) what is not a usable image. `read(paths,
    min_size)` makes the set (read_images by default; the data cache's readers map theirs)."""
    files = find_images(folder)
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    found = (read or read_images)(images, min_size)
    if len(files) > len(images):
        found.skipped["not an image file"] = [f.name for f in files if f.suffix.lower() not in IMAGE_SUFFIXES]
    if not found.names:
        raise UserError(
            f"no usable images in {folder} ({describe_skipped(found.skipped)}); "
            f"give a folder of RGB images at least {min_size}x{min_size}"
        )
    return found


# What Pillow raises on a file it cannot decode: damaged, not an image, or past its decompression-bomb limit.
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def why_unreadable(err):
    if isinstance(err, Image.DecompressionBombError):
        return f"over Pillow's limit of {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels"
    return UNREADABLE


def read_images(paths, min_size=1):
    found = ImageSet([], [], {})
    for path in paths:
        try:
            image, mode = decode(path)
        except OSError as err:
            image, mode = None, not_read(err)
        found.add(Path(path).name, image, mode, min_size)
    return found


def decode(path):
    """(to_rgb8's array, the mode it was converted from), or (None, why it cannot be decoded). A file that
    cannot be read now (gone, refused, an I/O error: an OSError with an errno) raises instead: unlike a
    damaged file, it may read another time."""
    try:
        return to_rgb8(path)
    except DECODE_ERRORS as err:
        if isinstance(err, OSError) and err.errno is not None:
            raise
        return None, why_unreadable(err)


def not_read(err):
    """Why a file was skipped this time: decode's OSError."""
    return f"could not be read ({err.strerror or err})"


def to_rgb8(path):
    """Any PIL-readable image as (HxWx3 uint8, the mode it was converted from or None for 8-bit RGB):
    grayscale and RGBA converted, 16-bit scaled down."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.load()
            mode = None if img.mode == "RGB" else img.mode
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                scale = 65535.0 if arr.max() > 255 else 255.0
                arr = np.repeat(np.round(arr / scale * 255).astype(np.uint8)[..., None], 3, axis=2)
            else:
                arr = np.asarray(img.convert("RGB"))
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError("not an RGB image")
    return np.ascontiguousarray(arr), mode


def to_rgb8_or_refuse(path):
    """to_rgb8's array for a file the user named: one line when it cannot be decoded."""
    try:
        return to_rgb8(path)[0]
    except DECODE_ERRORS as err:
        raise UserError(f"cannot read {path} as an image ({why_unreadable(err)}); is it a complete PNG/JPEG?") from None


def describe_skipped(skipped):
    return (
        "; ".join(
            f"{len(v)} {reason}: {', '.join(v[:3])}{'...' if len(v) > 3 else ''}" for reason, v in skipped.items()
        )
        or "none skipped"
    )


def to_uint8(img):
    """(3,H,W) or (1,3,H,W) float in [0, 1] -> HxWx3 uint8."""
    img = img.detach().float().cpu().squeeze(0).clamp(0, 1)
    return np.round(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def save_png(img, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(img)).save(path)
