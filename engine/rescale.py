"""Rescale your own images with a trained IRN:

    python -m engine.rescale down IN OUT --checkpoint CKPT
    python -m engine.rescale up   IN OUT --checkpoint CKPT [--temperature T] [--seed S]

IN and OUT are image files or folders. `down` pads by reflection to a multiple of the scale and
writes an 8-bit PNG LR that records the original size; `up` upscales with z ~ N(0, T^2) (T = 0:
z = 0) and crops back to that size, so down then up returns an image of the original size.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, PngImagePlugin

import engine
from engine.data import image_files, tensors
from engine.data.image_files import to_uint8
from engine.errors import UserError, cli, parser

SIZE_KEY = "irn-hr-size"  # PNG text chunk: "HxW" of the image before downscaling


def pad_to_multiple(x, multiple):
    """Reflection-pad the bottom and right edges up to multiples of `multiple`."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"  # reflection needs more pixels than it pads
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def read(path):
    img, _ = image_files.decode(path)
    if img is None:
        raise UserError(f"cannot read {path} as an image; is it a complete PNG/JPEG?")
    with Image.open(path) as im:
        size = im.info.get(SIZE_KEY)
    return tensors.image_tensor(img, 1), size


def write(x, path, hr_size=None):
    info = PngImagePlugin.PngInfo()
    if hr_size:
        info.add_text(SIZE_KEY, f"{hr_size[0]}x{hr_size[1]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(x)).save(path.with_suffix(".png"), pnginfo=info)


@torch.no_grad()
def down(model, x):
    h, w = x.shape[-2:]
    lr, _ = model.downscale(pad_to_multiple(x, model.scale))
    return lr, (h, w)


@torch.no_grad()
def up(model, lr, hr_size, temperature, generator):
    hr = model.upscale(lr, temperature=temperature, generator=generator).clamp(0, 1)
    if hr_size:
        h, w = (int(v) for v in hr_size.split("x"))
        hr = hr[..., :h, :w]
    return hr


def pairs(src, dst):
    """(input, output) paths: a file to a file, or every image in a folder to the same names in another."""
    src, dst = Path(src), Path(dst)
    if src.is_file():
        return [(src, dst if dst.suffix else dst / f"{src.stem}.png")]
    if src.is_dir():
        files = [p for p in sorted(src.iterdir()) if p.suffix.lower() in image_files.IMAGE_SUFFIXES]
        if not files:
            raise UserError(f"no images in {src}")
        return [(p, dst / f"{p.stem}.png") for p in files]
    raise UserError(f"no file or folder at {src}")


@cli
def main(argv=None):
    p = parser("python -m engine.rescale", __doc__)
    p.add_argument("direction", choices=("down", "up"))
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("output", help="a PNG file or a folder")
    p.add_argument("--checkpoint", required=True, help="this project's checkpoint or an official IRN .pth")
    p.add_argument("--temperature", type=float, default=1.0, help="z ~ N(0, T^2) for `up` (0: z = 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled z")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    jobs = pairs(args.input, args.output)
    model = engine.load(args.checkpoint, device=args.device)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    for src, dst in jobs:
        x, hr_size = read(src)
        x = x.to(args.device)
        if args.direction == "down":
            lr, size = down(model, x)
            write(lr, dst, size)
        else:
            write(up(model, x, hr_size, args.temperature, generator), dst)
        print(f"{src} -> {dst.with_suffix('.png')}")


if __name__ == "__main__":
    main()
