"""The compression restoration module (CRM) of the official IJCV release of IRN ("Invertible Rescaling Network
and Its Extensions", Xiao et al., IJCV 2023): an RRDB network that takes a decoded, compressed LR back towards
the LR IRN made, before IRN's upscale.

Layout and names are the official RRDBNet's (codes/models/modules/RRDB.py of the release), so its `.pth`
loads as it is: conv_first (3 -> nf), RRDB_trunk.0 .. nb-1, trunk_conv (nf -> nf), conv_last (nf -> 3);
out = conv_last(f + trunk_conv(trunk(f))) with f = conv_first(x), no activation between. Each RRDB
(RDB1..RDB3) is x + 0.2 * RDB3(RDB2(RDB1(x))), and each residual dense block is x + 0.2 * D(x), D being IRN's
own dense block (engine/model/irn.py: conv1..conv5, growth gc, LeakyReLU 0.2) from nf to nf channels, so
--fast-kernels runs it fused as it runs IRN's. Initialised as the release does: each dense block's first four
convs Kaiming-normal x 0.1 with zero biases, its conv5 zero (every residual block starts as the identity),
the other convs PyTorch's default.
"""

import re

import torch.nn as nn

from engine.errors import UserError
from engine.model.irn import IMAGE_CHANNELS, DenseBlock

RESIDUAL_SCALE = 0.2  # both residuals, the dense block's and the RRDB's, add 0.2 x their branch
OFFICIAL = dict(features=64, blocks=8, growth=32)  # the release's network_R: nf 64, nb 8, gc 32


class ResidualDenseBlock(DenseBlock):
    """x + 0.2 * D(x): IRN's dense block from `features` to `features` channels, with a residual."""

    def __init__(self, features, growth):
        super().__init__(features, features, growth, init="kaiming")

    def forward(self, x):
        return x + RESIDUAL_SCALE * super().forward(x)


class RRDB(nn.Module):
    """Three residual dense blocks in a row, inside a residual of their own."""

    def __init__(self, features, growth):
        super().__init__()
        self.RDB1 = ResidualDenseBlock(features, growth)
        self.RDB2 = ResidualDenseBlock(features, growth)
        self.RDB3 = ResidualDenseBlock(features, growth)

    def forward(self, x):
        return x + RESIDUAL_SCALE * self.RDB3(self.RDB2(self.RDB1(x)))


class CRM(nn.Module):
    """The RRDBNet (in 3, out 3): a decoded LR in [0, 1] to the restored LR (not clamped, not quantised)."""

    def __init__(self, features=64, blocks=8, growth=32):
        super().__init__()
        self.arch = dict(features=features, blocks=blocks, growth=growth)
        self.conv_first = nn.Conv2d(IMAGE_CHANNELS, features, 3, padding=1)
        self.RRDB_trunk = nn.Sequential(*(RRDB(features, growth) for _ in range(blocks)))
        self.trunk_conv = nn.Conv2d(features, features, 3, padding=1)
        self.conv_last = nn.Conv2d(features, IMAGE_CHANNELS, 3, padding=1)

    def forward(self, x):
        features = self.conv_first(x)
        return self.conv_last(features + self.trunk_conv(self.RRDB_trunk(features)))


def build(**arch):
    """A fresh CRM, officially initialised: the release's nf 64, nb 8, gc 32 unless `arch` says otherwise."""
    return CRM(**(OFFICIAL | arch))


_BLOCK = re.compile(r"^RRDB_trunk\.(\d+)\.")


def holds_crm(state):
    """Whether a state dict is a CRM's (its first conv is the RRDBNet's conv_first)."""
    return "conv_first.weight" in state


def from_state_dict(state):
    """The CRM that the weights describe (features, blocks and growth read from their shapes), loaded."""
    blocks = {int(m[1]) for key in state if (m := _BLOCK.match(key))}
    first_dense = state.get("RRDB_trunk.0.RDB1.conv1.weight")
    if first_dense is None:
        raise UserError("the CRM's weights have no RRDB blocks (keys like RRDB_trunk.0.RDB1.conv1.weight)")
    model = CRM(features=state["conv_first.weight"].shape[0], blocks=len(blocks), growth=first_dense.shape[0])
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise UserError(
            f"unknown CRM layout: missing keys {missing[:3]}, unexpected keys {unexpected[:3]}; expected the RRDBNet "
            "of the official IRN-Compression release or a CRM of this project"
        )
    bad = [k for k in expected if expected[k].shape != state[k].shape]
    if bad:
        shapes = tuple(state[bad[0]].shape), tuple(expected[bad[0]].shape)
        raise UserError(f"CRM weight {bad[0]} has shape {shapes[0]}, expected {shapes[1]}")
    model.load_state_dict(state)
    return model
