"""An independent re-statement of the official IRN-Compression release's CRM (its RRDBNet), for tests only.

Written from the release's layout with plain convolutions and its own names (conv_first, RRDB_trunk.N.RDBk.convM,
trunk_conv, conv_last), so tests can load its state dict into the engine's CRM and compare outputs.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class OfficialResidualDenseBlock(nn.Module):
    def __init__(self, nf, gc):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)

    def forward(self, x):
        a = F.leaky_relu(self.conv1(x), 0.2)
        b = F.leaky_relu(self.conv2(torch.cat((x, a), 1)), 0.2)
        c = F.leaky_relu(self.conv3(torch.cat((x, a, b), 1)), 0.2)
        d = F.leaky_relu(self.conv4(torch.cat((x, a, b, c), 1)), 0.2)
        return self.conv5(torch.cat((x, a, b, c, d), 1)) * 0.2 + x


class OfficialRRDB(nn.Module):
    def __init__(self, nf, gc):
        super().__init__()
        self.RDB1 = OfficialResidualDenseBlock(nf, gc)
        self.RDB2 = OfficialResidualDenseBlock(nf, gc)
        self.RDB3 = OfficialResidualDenseBlock(nf, gc)

    def forward(self, x):
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


class OfficialRRDBNet(nn.Module):
    def __init__(self, in_nc=3, out_nc=3, nf=64, nb=8, gc=32):
        super().__init__()
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*(OfficialRRDB(nf, gc) for _ in range(nb)))
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)

    def forward(self, x):
        fea = self.conv_first(x)
        return self.conv_last(fea + self.trunk_conv(self.RRDB_trunk(fea)))


def parameters(nf=64, nb=8, gc=32, channels=3):
    """The RRDBNet's parameter count by hand: 3x3 convs (weights c_in * c_out * 9, biases c_out)."""

    def conv(c_in, c_out):
        return c_in * c_out * 9 + c_out

    dense = sum(conv(nf + k * gc, gc) for k in range(4)) + conv(nf + 4 * gc, nf)
    return conv(channels, nf) + nb * 3 * dense + conv(nf, nf) + conv(nf, channels)
