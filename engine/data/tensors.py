"""Images between uint8 arrays and float tensors: whole images cropped to multiples of the scale, their
official LR references (MATLAB bicubic, engine/data/imresize.py), and bicubic on the device for display."""

import numpy as np
import torch
import torch.nn.functional as F

from engine.data.imresize import imresize


def to_float(batch_u8):
    """uint8 (B,3,H,W) on any device -> float in [0, 1]."""
    return batch_u8.float().div_(255)


def bicubic_down(hr, scale):
    """Antialiased bicubic (a = -0.5) on the device: MATLAB's imresize inside the image, renormalised at
    its border; for images shown beside IRN's LR. The training LR reference is engine/data/imresize.py's."""
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
