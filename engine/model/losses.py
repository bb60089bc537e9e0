"""IRN's three losses, each a sum over C*H*W averaged over the batch (as in the official code)."""

import torch

from engine.model.irn import IMAGE_CHANNELS, quantize


def squared_error(x, target):
    """Squared L2, summed over C*H*W and averaged over the batch (the official 'l2')."""
    return (x - target).pow(2).flatten(1).sum(1).mean()


def forward_fit(y, lr_ref):
    """Squared L2 between the network's LR and the (detached) bicubic reference."""
    return squared_error(y, lr_ref)


def latent(z):
    """sum(z^2): pushes the latent towards N(0, 1)."""
    return z.pow(2).flatten(1).sum(1).mean()


def charbonnier(x, target, eps=1e-6):
    """The official 'l1' reconstruction loss: sqrt(diff^2 + eps) summed."""
    return torch.sqrt((x - target).pow(2) + eps).flatten(1).sum(1).mean()


def network_passes(model, hr, noise, z_scale=1.0, channel=None):
    """(y, z, reconstruction): downscale hr to (y, z), then upscale (channel(Q(y)), z_scale * noise) back to HR.
    y is not detached: the reconstruction's gradient reaches the forward pass through Q and `channel` (None:
    the 8-bit LR as it is; a lossy codec passes the gradient straight through)."""
    out = model(hr)
    y, z = out[:, :IMAGE_CHANNELS], out[:, IMAGE_CHANNELS:]
    received = quantize(y) if channel is None else channel(quantize(y))
    reconstruction = upscale_pass(model, received, z_scale * noise)
    return y, z, reconstruction


def upscale_pass(model, lr, z):
    """IRN's inverse of (lr, z), the HR image it gives."""
    return model(torch.cat((lr, z), 1), rev=True)[:, :IMAGE_CHANNELS]


def irn_losses(y, z, reconstruction, hr, lr_ref, lambda_fit, lambda_ce, lambda_rec):
    """The weighted losses by name; their sum is the training objective."""
    return {
        "forw_fit": lambda_fit * forward_fit(y, lr_ref.detach()),
        "forw_ce": lambda_ce * latent(z),
        "back_rec": lambda_rec * charbonnier(reconstruction, hr),
    }
