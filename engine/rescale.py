"""Rescale your own images with a trained IRN:

    python -m engine.rescale down IN OUT --checkpoint CKPT [--jpeg QUALITY] [--overwrite]
    python -m engine.rescale up   IN OUT --checkpoint CKPT [--crm CRM] [--temperature T] [--seed S] [--overwrite]

IN and OUT are image files or folders. `down` pads by reflection to a multiple of the scale and writes an
8-bit PNG LR (lossless) that records the original size and whether the image was grayscale, or with --jpeg
a JPEG LR at that quality (Pillow, as engine/data/codec.py encodes) recording them in its comment; `up`
upscales with z ~ N(0, T^2) (T = 0: z = 0), crops back to that size and gives a grayscale image back as
grayscale, so down then up returns an image like the original. With a CRM (--crm, or a CRM run's checkpoint
as --checkpoint) `up` restores the decoded LR with it first, as a JPEG LR wants. `up` writes the format OUT
names (.png, .jpg, ...). An existing OUT file is replaced only with --overwrite.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, PngImagePlugin

from engine.data import codec, image_files, tensors
from engine.data.image_files import to_uint8
from engine.errors import UserError, cli, parser
from engine.model import execution, irn
from engine.model.rescaler import load_with_crm
from engine.training import config
from engine.training.config import flag_type

SIZE_KEY = "irn-hr-size"  # PNG text chunk: "HxW" of the image before downscaling
GRAY_KEY = "irn-hr-gray"  # PNG text chunk: "1" when the image before downscaling was grayscale


def pad_to_multiple(x, multiple):
    """Reflection-pad the bottom and right edges up to multiples of `multiple`."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"  # reflection needs more pixels than it pads
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def read(path):
    """(image tensor, the HR size its tag records or None, whether it is or was grayscale)."""
    img = image_files.to_rgb8_or_refuse(path)
    with Image.open(path) as im:
        info, gray = dict(im.info), im.mode in ("L", "LA", "I", "I;16", "I;16B", "I;16L", "1")
    info |= comment_tags(info.get("comment"))
    if info.get(GRAY_KEY, "0") not in ("0", "1"):
        raise UserError(
            f"{path}: its {GRAY_KEY} tag is {str(info[GRAY_KEY])[:40]!r}, not 0 or 1; rewrite it with rescale down"
        )
    return tensors.image_tensor(img, 1), hr_size(info.get(SIZE_KEY), path), gray or info.get(GRAY_KEY) == "1"


def comment_tags(comment):
    """The tags a JPEG LR carries in its comment, "irn-hr-size=HxW;irn-hr-gray=0", as {key: value}."""
    text = comment.decode("latin-1") if isinstance(comment, bytes) else ""
    return dict(item.partition("=")[::2] for item in text.split(";") if item.startswith((SIZE_KEY, GRAY_KEY)))


def hr_size(tag, path):
    """The (H, W) of a size tag "HxW", None without one; a malformed tag is one line."""
    if tag is None:
        return None
    h, _, w = str(tag).partition("x")
    if not (h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
        raise UserError(f"{path}: its {SIZE_KEY} tag is {str(tag)[:40]!r}, not HxW; rewrite it with rescale down")
    return int(h), int(w)


def write(x, path, hr_size=None, gray=False, jpeg=None):
    """An 8-bit image file; an LR (hr_size given) as PNG with its tags (as a JPEG at quality `jpeg`, the tags in
    its comment), an HR in the format `path` names."""
    tags = {SIZE_KEY: f"{hr_size[0]}x{hr_size[1]}", GRAY_KEY: "1" if gray else "0"} if hr_size else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    if jpeg:
        comment = ";".join(f"{k}={v}" for k, v in tags.items()).encode()
        path.write_bytes(codec.encode(to_uint8(x), "jpeg", jpeg, comment=comment))
        return
    image = Image.fromarray(to_uint8(x))
    if gray and not hr_size:
        image = image.convert("L")
    if path.suffix.lower() == ".png":
        info = PngImagePlugin.PngInfo()
        for key, value in tags.items():
            info.add_text(key, value)
        image.save(path, pnginfo=info)
    else:
        image.save(path)


def check_hr_size(size, lr, scale, path):
    """A size tag that an LR of this size cannot come from (down pads the HR to the next multiple of the
    scale) is one line: another scale's LR, or a tag written by hand."""
    h, w = lr.shape[-2:]
    if not ((h - 1) * scale < size[0] <= h * scale and (w - 1) * scale < size[1] <= w * scale):
        raise UserError(
            f"{path}: its {SIZE_KEY} tag says {size[0]}x{size[1]}, which an x{scale} LR of {h}x{w} does not come "
            "from; upscale it with the model that made it, or rewrite it with rescale down"
        )


@torch.no_grad()
def down(model, x):
    h, w = x.shape[-2:]
    lr, _ = model.downscale(pad_to_multiple(x, model.scale))
    return lr, (h, w)


@torch.no_grad()
def up(model, lr, size, temperature, generator, restorer=None):
    if restorer is not None:  # the official test's order: restore the decoded LR, round it to 8 bits, upscale
        lr = irn.quantize(restorer(lr))
    hr = model.upscale(lr, temperature=temperature, generator=generator).clamp(0, 1)
    return hr[..., : size[0], : size[1]] if size else hr


def pairs(src, dst, direction, overwrite, jpeg=None):
    """(input, output) paths: a file to a file, or every image of a folder to the same stem in another; outputs
    that two inputs share, an LR that is not a PNG (a JPEG, with `jpeg`) and outputs that exist (without
    `overwrite`) are refused."""
    src, dst = Path(src), Path(dst)
    suffix = ".jpg" if jpeg and direction == "down" else ".png"
    if src.is_file():
        jobs = [(src, dst if dst.suffix else dst / f"{src.stem}{suffix}")]
    elif src.is_dir():
        files = [p for p in sorted(src.iterdir()) if p.suffix.lower() in image_files.IMAGE_SUFFIXES]
        if not files:
            raise UserError(f"no images in {src}")
        jobs = [(p, dst / f"{p.stem}{suffix}") for p in files]
    else:
        raise UserError(f"no file or folder at {src}")
    refuse_collisions(jobs)
    if direction == "down" and jpeg and jobs[0][1].suffix.lower() not in (".jpg", ".jpeg"):
        raise UserError(f"{jobs[0][1]}: --jpeg writes the LR as JPEG; name it .jpg")
    if direction == "down" and not jpeg and jobs[0][1].suffix.lower() != ".png":
        raise UserError(
            f"{jobs[0][1]}: an LR is written as PNG (lossless, and it carries the original size); "
            "--jpeg QUALITY writes a JPEG"
        )
    existing = [out for _, out in jobs if out.exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} exists ({len(existing)} of the outputs do); add --overwrite to replace them")
    return jobs


def refuse_collisions(jobs):
    seen = {}
    for src, out in jobs:
        if out in seen:
            raise UserError(f"{seen[out].name} and {src.name} would both be written to {out}; rename one of them")
        seen[out] = src


@cli
def main(argv=None):
    p = parser("python -m engine.rescale", __doc__)
    p.add_argument("direction", choices=("down", "up"))
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("output", help="an image file (an LR: .png) or a folder")
    p.add_argument("--checkpoint", required=True, help="this project's checkpoint or an official IRN .pth")
    p.add_argument(
        "--temperature", type=flag_type(float, config.number(0)), default=1.0, help="z ~ N(0, T^2) for up (0: z = 0)"
    )
    p.add_argument("--seed", type=flag_type(int, config.integer(0)), default=0, help="seed of the sampled z")
    p.add_argument(
        "--jpeg", type=flag_type(int, config.a_quality), metavar="QUALITY", help="down: write a JPEG LR (1-100)"
    )
    p.add_argument("--crm", help="up: a CRM that restores the decoded LR first (the official .pth or a CRM run's)")
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    p.add_argument("--device", default="auto", help=f"{execution.DEVICE_CHOICES} (default: auto)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    device = execution.device_for(args.device)
    if args.jpeg and args.direction != "down" or args.crm and args.direction != "up":
        raise UserError("--jpeg is an option of down (it writes the LR), --crm one of up (it restores the LR)")
    jobs = pairs(args.input, args.output, args.direction, args.overwrite, args.jpeg)
    model, restorer = load_with_crm(args.checkpoint, args.crm, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    for src, dst in jobs:
        x, size, gray = read(src)
        x = x.to(device)
        if args.direction == "down":
            lr, size = down(model, x)
            write(lr, dst, size, gray, jpeg=args.jpeg)
        else:
            if size is None:
                h, w = x.shape[-2] * model.scale, x.shape[-1] * model.scale
                print(
                    f"{src} has no {SIZE_KEY} tag (not written by rescale down): upscaling it x{model.scale} to {w}x{h}"
                )
            else:
                check_hr_size(size, x, model.scale, src)
            write(up(model, x, size, args.temperature, generator, restorer), dst, gray=gray)
        print(f"{src} -> {dst}")


if __name__ == "__main__":
    main()
