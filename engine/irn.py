"""IRN as a FrEIA graph: Haar downsampling stages, each followed by IRN's affine coupling blocks.

The graph is the reference that defines correct outputs. Each Haar, coupling and dense-block module
has a `fast_op` attribute: None runs the reference math, a function from `kernels` runs the fused op
(engine/ops.py sets it); the weights are the same either way.

Precision: the invertible stream (Haar, the coupling's affine update, the quantiser and the losses)
is always fp32; only the dense blocks may compute in bf16 or fp16 (`compute_dtype`), and they hand
their outputs back in the stream's dtype.
"""

import math

import torch
import torch.nn as nn
from FrEIA.framework import SequenceINN
from FrEIA.modules import HaarDownsampling, InvertibleModule

IMAGE_CHANNELS = 3


class DenseBlock(nn.Module):
    """IRN's subnet: five 3x3 convs, each seeing the input and every earlier output."""

    def __init__(self, c_in, c_out, growth=32):
        super().__init__()
        self.fast_op, self.compute_dtype = None, None
        for k in range(4):
            self.add_module(f"conv{k + 1}", nn.Conv2d(c_in + k * growth, growth, 3, padding=1))
        self.conv5 = nn.Conv2d(c_in + 4 * growth, c_out, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            nn.init.xavier_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)
        # A zero last conv makes every block start as the identity.
        nn.init.zeros_(self.conv5.weight)
        nn.init.zeros_(self.conv5.bias)

    def convs(self):
        return (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5)

    def forward(self, x):
        """F(x) computed in `compute_dtype` (None: x's own), returned in x's dtype."""
        low = self.compute_dtype is not None
        with torch.autocast(x.device.type, dtype=self.compute_dtype, enabled=low):
            if self.fast_op is not None:  # casts x itself under autocast
                out = self.fast_op(x, [c.weight for c in self.convs()], [c.bias for c in self.convs()])
            else:
                out = self.reference(x.to(self.compute_dtype) if low else x)  # one cast: every concatenation is low
        return out.to(x.dtype)

    def reference(self, x):
        features = [x]
        for conv in self.convs()[:4]:
            features.append(self.lrelu(conv(torch.cat(features, 1))))
        return self.conv5(torch.cat(features, 1))


def coupling_scale(h, clamp):
    """IRN's soft clamp of the log-scale: s = clamp * (2 * sigmoid(h) - 1)."""
    return clamp * (2 * torch.sigmoid(h) - 1)


class IRNCoupling(InvertibleModule):
    """IRN's invertible block (InvBlockExp): additive on the first 3 channels, affine on the rest.

    forward: y1 = x1 + F(x2); y2 = x2 * exp(s(H(y1))) + G(y1)
    inverse: x2 = (y2 - G(y1)) * exp(-s(H(y1))); x1 = y1 - F(x2)
    """

    def __init__(self, dims_in, dims_c=None, split=IMAGE_CHANNELS, clamp=1.0, growth=32):
        super().__init__(dims_in, dims_c)
        channels = dims_in[0][0]
        self.split, self.clamp = split, clamp
        self.F = DenseBlock(channels - split, split, growth)
        self.G = DenseBlock(split, channels - split, growth)
        self.H = DenseBlock(split, channels - split, growth)
        self.fast_op = None

    def affine(self, x2, h, g, rev):
        if self.fast_op is not None:
            return self.fast_op(x2, h, g, self.clamp, rev)
        s = coupling_scale(h, self.clamp)
        return (x2 - g) * torch.exp(-s) if rev else x2 * torch.exp(s) + g

    def forward(self, x, c=None, rev=False, jac=True):
        a1, a2 = x[0][:, : self.split], x[0][:, self.split :]
        if not rev:
            y1 = a1 + self.F(a2)
            h = self.H(y1)
            out = (torch.cat((y1, self.affine(a2, h, self.G(y1), rev)), 1),)
        else:
            h = self.H(a1)
            x2 = self.affine(a2, h, self.G(a1), rev)
            out = (torch.cat((a1 - self.F(x2), x2), 1),)
        if not jac:
            return out, 0.0
        log_det = coupling_scale(h, self.clamp).flatten(1).sum(1)
        return out, -log_det if rev else log_det

    def output_dims(self, input_dims):
        return input_dims


class Haar(HaarDownsampling):
    """FrEIA's Haar downsampling in the setting that is exactly IRN's: band-major order, bands / 4."""

    def __init__(self, dims_in, dims_c=None):
        super().__init__(dims_in, dims_c, order_by_wavelet=True, rebalance=0.5)
        self.fast_op = None
        # FrEIA keeps the band permutations as plain CPU tensors: on a GPU each use would be a
        # host-to-device copy and a stream sync. As buffers they move with the module.
        for name in ("perm", "perm_inv"):
            index = getattr(self, name)
            delattr(self, name)
            self.register_buffer(name, index, persistent=False)

    def forward(self, x, c=None, jac=True, rev=False):
        if self.fast_op is None:
            return super().forward(x, c, jac, rev)
        log_det = x[0][0].numel() * (self.jac_rev if rev else self.jac_fwd)
        return (self.fast_op(x[0], rev),), log_det


def stages(scale):
    """Number of Haar stages for a power-of-two scale."""
    n = round(math.log2(scale)) if scale >= 2 else 0
    if scale < 2 or 2**n != scale:
        raise ValueError(f"scale must be a power of two (2, 4, 8, ...), got {scale}")
    return n


def build_graph(scale, blocks_per_stage=8, growth=32, clamp=1.0):
    """The IRN SequenceINN; module order matches the official `operations.N` indices."""
    side = scale  # nominal size: FrEIA needs one, the graph itself runs on any multiple of `scale`
    graph = SequenceINN(IMAGE_CHANNELS, side, side)
    for _ in range(stages(scale)):
        graph.append(Haar)
        for _ in range(blocks_per_stage):
            graph.append(IRNCoupling, clamp=clamp, growth=growth)
    return graph


class Quantize(torch.autograd.Function):
    """8-bit quantisation (clamp to [0, 1], round to 1/255) with a straight-through gradient."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x.clamp(0, 1) * 255) / 255

    @staticmethod
    def backward(ctx, grad):
        return grad


def quantize(x):
    return Quantize.apply(x)
