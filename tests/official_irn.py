"""An independent re-statement of the official IRN's layout (`operations.N`) and math, for tests only.

Written from the reference equations with plain convolutions, so tests can compare the FrEIA graph
against it and build official-layout state dicts.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class OfficialHaar(nn.Module):
    def __init__(self, channels):
        super().__init__()
        w = torch.ones(4, 1, 2, 2)
        w[1, 0, 0, 1] = w[1, 0, 1, 1] = -1
        w[2, 0, 1, 0] = w[2, 0, 1, 1] = -1
        w[3, 0, 1, 0] = w[3, 0, 0, 1] = -1
        self.channels = channels
        self.haar_weights = nn.Parameter(torch.cat([w] * channels, 0), requires_grad=False)

    def forward(self, x, rev=False):
        b, c, h, w = x.shape
        if not rev:
            out = F.conv2d(x, self.haar_weights, stride=2, groups=self.channels) / 4.0
            return out.reshape(b, self.channels, 4, h // 2, w // 2).transpose(1, 2).reshape(b, c * 4, h // 2, w // 2)
        out = x.reshape(b, 4, self.channels, h, w).transpose(1, 2).reshape(b, c, h, w)
        return F.conv_transpose2d(out, self.haar_weights, stride=2, groups=self.channels)


class OfficialConvDownsampling(nn.Module):
    """The release's learnable x3 downsampling: each s x s block of a channel to s^2 channels (pixel (i, j)
    at i * s + j, channel-major), a grouped 1x1 conv by one s^2 x s^2 matrix shared by the channels, then
    band-major order; the inverse runs the same steps backwards with torch.inverse of the matrix."""

    def __init__(self, scale=3):
        super().__init__()
        self.s = scale
        eye = torch.eye(scale * scale)
        eye[0] = 1.0 / (scale * scale)
        self.conv_weights = nn.Parameter(eye)

    def forward(self, x, rev=False):
        s, n = self.s, self.s * self.s
        if not rev:
            b, c, h, w = x.shape
            cells = x.reshape(b, c, h // s, s, w // s, s).permute(0, 1, 3, 5, 2, 4).reshape(b, c * n, h // s, w // s)
            mixed = F.conv2d(cells, self.conv_weights.reshape(n, n, 1, 1).repeat(c, 1, 1, 1), groups=c)
            return mixed.reshape(b, c, n, h // s, w // s).transpose(1, 2).reshape(b, c * n, h // s, w // s)
        b, cn, h, w = x.shape
        c = cn // n
        grouped = x.reshape(b, n, c, h, w).transpose(1, 2).reshape(b, cn, h, w)
        inverse = torch.inverse(self.conv_weights).reshape(n, n, 1, 1).repeat(c, 1, 1, 1)
        cells = F.conv2d(grouped, inverse, groups=c).reshape(b, c, s, s, h, w)
        return cells.permute(0, 1, 4, 2, 5, 3).reshape(b, c, h * s, w * s)


class OfficialDense(nn.Module):
    def __init__(self, c_in, c_out, gc=32):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(c_in + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(c_in + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(c_in + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(c_in + 4 * gc, c_out, 3, 1, 1)

    def forward(self, x):
        a = F.leaky_relu(self.conv1(x), 0.2)
        b = F.leaky_relu(self.conv2(torch.cat((x, a), 1)), 0.2)
        c = F.leaky_relu(self.conv3(torch.cat((x, a, b), 1)), 0.2)
        d = F.leaky_relu(self.conv4(torch.cat((x, a, b, c), 1)), 0.2)
        return self.conv5(torch.cat((x, a, b, c, d), 1))


class OfficialBlock(nn.Module):
    def __init__(self, channels, split=3, clamp=1.0):
        super().__init__()
        self.split, self.clamp = split, clamp
        self.F = OfficialDense(channels - split, split)
        self.G = OfficialDense(split, channels - split)
        self.H = OfficialDense(split, channels - split)

    def forward(self, x, rev=False):
        x1, x2 = x[:, : self.split], x[:, self.split :]
        if not rev:
            y1 = x1 + self.F(x2)
            s = self.clamp * (torch.sigmoid(self.H(y1)) * 2 - 1)
            y2 = x2.mul(torch.exp(s)) + self.G(y1)
        else:
            s = self.clamp * (torch.sigmoid(self.H(x1)) * 2 - 1)
            y2 = (x2 - self.G(x1)).div(torch.exp(s))
            y1 = x1 - self.F(y2)
        return torch.cat((y1, y2), 1)


class OfficialIRN(nn.Module):
    """x2, x4, x8: Haar stages with `blocks` blocks each; x3: the learnable downsampling, then `blocks`
    blocks on 27 channels (the release's use_ConvDownsampling with block_num [12])."""

    def __init__(self, scale, blocks=8):
        super().__init__()
        if scale == 3:
            self.operations = nn.ModuleList([OfficialConvDownsampling(3), *(OfficialBlock(27) for _ in range(blocks))])
            return
        ops, channels = [], 3
        for _ in range(scale.bit_length() - 1):
            ops.append(OfficialHaar(channels))
            channels *= 4
            ops.extend(OfficialBlock(channels) for _ in range(blocks))
        self.operations = nn.ModuleList(ops)

    def forward(self, x, rev=False):
        for op in reversed(self.operations) if rev else self.operations:
            x = op(x, rev)
        return x


def randomize(model, std=0.05, seed=0):
    """Non-zero weights everywhere (fresh IRN blocks are the identity), fixed Haar weights kept; a
    downsampling matrix (conv_weights) is perturbed around its start instead, so that it stays
    well-conditioned and invertible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("conv_weights"):
                p.add_(torch.randn(p.shape, generator=g) * std)
            elif p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model
