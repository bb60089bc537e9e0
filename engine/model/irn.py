"""IRN as a FrEIA graph: downsampling stages, each followed by IRN's affine coupling blocks.

Power-of-two scales downsample with one Haar transform per factor of two (8 blocks after each); x3,
as the official release builds it, with one learnable 3x3 downsampling followed by 12 blocks.

The graph is the reference that defines correct outputs. Each Haar, coupling and dense-block module
has a `fast_op` attribute: None runs the reference math, a function from `kernels` runs the fused op
(engine/model/execution.py sets it); the weights are the same either way.

Precision: the invertible stream (Haar, the learnable downsampling, the coupling's affine update, the
quantiser and the losses) is always fp32; only the dense blocks may compute in bf16 or fp16
(`compute_dtype`), and they hand their outputs back in the stream's dtype.
"""

import math

import torch
import torch.nn as nn
from FrEIA.framework import SequenceINN
from FrEIA.modules import HaarDownsampling, InvertibleModule

IMAGE_CHANNELS = 3


INITS = {"xavier": nn.init.xavier_normal_, "kaiming": lambda w: nn.init.kaiming_normal_(w, a=0, mode="fan_in")}


class DenseBlock(nn.Module):
    """IRN's subnet: five 3x3 convs, each seeing the input and every earlier output.

    `init` as the official subnet's: the first four convs drawn from Xavier's normal (IRN's choice) or
    Kaiming's (fan-in), scaled by 0.1, with zero biases."""

    def __init__(self, c_in, c_out, growth=32, init="xavier"):
        super().__init__()
        self.fast_op, self.compute_dtype = None, None
        for k in range(4):
            self.add_module(f"conv{k + 1}", nn.Conv2d(c_in + k * growth, growth, 3, padding=1))
        self.conv5 = nn.Conv2d(c_in + 4 * growth, c_out, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            INITS[init](conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)
        # A zero last conv makes every block start as the identity.
        nn.init.zeros_(self.conv5.weight)
        nn.init.zeros_(self.conv5.bias)

    def convs(self):
        return (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5)

    def weights_and_biases(self):
        """([the five convs' weights], [their biases]), as the dense-block ops take them."""
        return [c.weight for c in self.convs()], [c.bias for c in self.convs()]

    def forward(self, x):
        """F(x) computed in `compute_dtype` (None: x's own), returned in x's dtype."""
        (out,) = in_compute_dtype(self.compute_dtype, x, lambda x: (self.computed(x),))
        return out

    def computed(self, x):
        """F(x) under forward's autocast: the fused op casts x itself, the reference casts it once (every
        concatenation is then in the compute dtype)."""
        if self.fast_op is not None:
            return self.fast_op(x, *self.weights_and_biases())
        return self.reference(x if self.compute_dtype is None else x.to(self.compute_dtype))

    def reference(self, x):
        features = [x]
        for conv in self.convs()[:4]:
            features.append(self.lrelu(conv(torch.cat(features, 1))))
        return self.conv5(torch.cat(features, 1))


def in_compute_dtype(dtype, x, run):
    """run(x)'s outputs, computed under autocast to `dtype` (None: in x's own dtype), returned in x's dtype."""
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        outs = run(x)
    return [out.to(x.dtype) for out in outs]


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
        # fast_subnets: None, or an op that runs H and G in one call (kernels.dense.dense_blocks), set where
        # both run the fused kernels (engine/model/execution.py)
        self.fast_op, self.fast_subnets = None, None

    def affine(self, x2, h, g, rev):
        if self.fast_op is not None:
            return self.fast_op(x2, h, g, self.clamp, rev)
        s = coupling_scale(h, self.clamp)
        return (x2 - g) * torch.exp(-s) if rev else x2 * torch.exp(s) + g

    def scale_and_shift(self, y1):
        """H(y1) and G(y1): both blocks in one call of fast_subnets where it is set (they read the same input
        with the same shapes, and share a compute dtype: set_subnet_precision sets every block's), else one block
        after the other. Paired, the blocks' own forward (and its hooks) is not called."""
        if self.fast_subnets is None:
            return self.H(y1), self.G(y1)
        (h_weights, h_biases), (g_weights, g_biases) = self.H.weights_and_biases(), self.G.weights_and_biases()

        def both(y1):
            return self.fast_subnets(y1, [h_weights, g_weights], [h_biases, g_biases])

        return in_compute_dtype(self.H.compute_dtype, y1, both)

    def forward(self, x, c=None, rev=False, jac=True):
        a1, a2 = x[0][:, : self.split], x[0][:, self.split :]
        if not rev:
            y1 = a1 + self.F(a2)
            h, g = self.scale_and_shift(y1)
            out = (torch.cat((y1, self.affine(a2, h, g, rev)), 1),)
        else:
            h, g = self.scale_and_shift(a1)
            x2 = self.affine(a2, h, g, rev)
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


class LearnedDownsampling(InvertibleModule):
    """The official x3 downsampling (`ConvDownsampling`): space-to-depth by `scale`, then one learnable
    s^2 x s^2 matrix W that mixes the s^2 pixels of every s x s block, the same W for every channel.

    Layout, as the official code's: pixel (i, j) of a block is value m = i * s + j; output channel
    k * C + c (band-major, as the Haar transform) is sum_m W[k, m] * x[c, s * y + i, s * x + j].
    Init: the identity with its first row set to 1 / s^2 (band 0 is the block's mean: a box-filtered
    LR; at s = 2 the official code starts from Haar instead). Inverse: W^-1. Log-det per sample:
    (C * H * W / s^2) * log|det W| (log(1/9) per block and channel at init; the official module
    defines none). H and W must be multiples of s (the official forward pads, which its inverse does not
    undo). Computes in the stream's dtype under any outer autocast.
    """

    def __init__(self, dims_in, dims_c=None, scale=3):
        super().__init__(dims_in, dims_c)
        self.scale, n = scale, scale * scale
        weights = torch.eye(n)
        if scale == 2:  # the official Haar start: every band / 4
            weights = torch.tensor([[1.0, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 4
        else:
            weights[0] = 1 / n
        self.conv_weights = nn.Parameter(weights)  # the official state-dict name (operations.0.conv_weights)

    def forward(self, x, c=None, jac=True, rev=False):
        x, s, n = x[0], self.scale, self.scale**2
        with torch.autocast(x.device.type, enabled=False):
            if not rev:
                b, ch, h, w = x.shape
                blocks = x.reshape(b, ch, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4)  # (b, i, j, c, y, x)
                mixed = torch.bmm(self.conv_weights.expand(b, n, n), blocks.reshape(b, n, -1))  # one batched GEMM
                out = mixed.reshape(b, n * ch, h // s, w // s)
            else:
                b, chn, h, w = x.shape
                # inv_ex: torch.inverse without its error check, which syncs the host with a GPU
                inverse = torch.linalg.inv_ex(self.conv_weights).inverse
                blocks = torch.bmm(inverse.expand(b, n, n), x.reshape(b, n, -1)).reshape(b, s, s, chn // n, h, w)
                out = blocks.permute(0, 3, 4, 1, 5, 2).reshape(b, chn // n, h * s, w * s)
            if not jac:
                return (out,), 0.0
            log_det = torch.linalg.slogdet(self.conv_weights).logabsdet * (x[0].numel() / n)
        return (out,), (-log_det if rev else log_det).expand(b)

    def output_dims(self, input_dims):
        ch, h, w = input_dims[0]
        s = self.scale
        return [(ch * s * s, h // s, w // s)]


LEARNED_DOWNSAMPLING = (3,)  # scales the official release builds with one learnable downsampling
OFFICIAL_BLOCKS = {3: 12}  # coupling blocks per stage where the official recipe has other than 8


def stages(scale):
    """Number of downsampling stages: one Haar per factor of two, or one learnable downsampling at x3."""
    if scale in LEARNED_DOWNSAMPLING:
        return 1
    n = round(math.log2(scale)) if scale >= 2 else 0
    if scale < 2 or 2**n != scale:
        raise ValueError(f"scale must be a power of two (2, 4, 8, ...) or 3, got {scale}")
    return n


def official_blocks(scale):
    """The official recipe's coupling blocks per stage: 8 after each Haar, 12 at x3."""
    return OFFICIAL_BLOCKS.get(scale, 8)


def build_graph(scale, blocks_per_stage, growth=32, clamp=1.0):
    """The IRN SequenceINN; module order matches the official `operations.N` indices."""
    side = scale  # nominal size: FrEIA needs one, the graph itself runs on any multiple of `scale`
    graph = SequenceINN(IMAGE_CHANNELS, side, side)
    for _ in range(stages(scale)):
        if scale in LEARNED_DOWNSAMPLING:
            graph.append(LearnedDownsampling, scale=scale)
        else:
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
