"""IRN's three losses, each a sum over C*H*W averaged over the batch (as in the official code)."""

import torch

from engine.model.irn import IMAGE_CHANNELS, quantize


def forward_fit(y, lr_ref):
    """Squared L2 between the network's LR and the (detached) bicubic reference."""
    return (y - lr_ref).pow(2).flatten(1).sum(1).mean()


def latent(z):
    """sum(z^2): pushes the latent towards N(0, 1)."""
    return z.pow(2).flatten(1).sum(1).mean()


def charbonnier(x, target, eps=1e-6):
    """The official 'l1' reconstruction loss: sqrt(diff^2 + eps) summed."""
    return torch.sqrt((x - target).pow(2) + eps).flatten(1).sum(1).mean()


def network_passes(model, hr, noise, z_scale=1.0):
    """(y, z, reconstruction): downscale hr to (y, z), then upscale (Q(y), z_scale * noise) back to HR.
    y is not detached: the reconstruction's gradient reaches the forward pass through Q."""
    out = model(hr)
    y, z = out[:, :IMAGE_CHANNELS], out[:, IMAGE_CHANNELS:]
    reconstruction = model(torch.cat((quantize(y), z_scale * noise), 1), rev=True)[:, :IMAGE_CHANNELS]
    return y, z, reconstruction


def irn_losses(y, z, reconstruction, hr, lr_ref, lambda_fit, lambda_ce, lambda_rec):
    """The weighted losses by name; their sum is the training objective."""
    return {
        "forw_fit": lambda_fit * forward_fit(y, lr_ref.detach()),
        "forw_ce": lambda_ce * latent(z),
        "back_rec": lambda_rec * charbonnier(reconstruction, hr),
    }
