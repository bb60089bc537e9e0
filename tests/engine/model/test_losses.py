import math

import torch

from engine.model.losses import charbonnier, forward_fit, irn_losses, latent


def test_losses_equal_their_formulas_on_a_hand_made_case():
    y = torch.zeros(2, 1, 1, 2)
    ref = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 3.0]]]])
    assert forward_fit(y, ref).item() == (1 + 4 + 0 + 9) / 2
    assert latent(ref).item() == (1 + 4 + 9) / 2
    x = torch.tensor([[[[0.0, 1.0]]]])
    expected = math.sqrt(1e-6) + math.sqrt(1 + 1e-6)
    assert abs(charbonnier(x, torch.zeros_like(x)).item() - expected) < 1e-6


def test_weights_scale_each_loss():
    y, z, back, hr = torch.ones(1, 3, 2, 2), torch.ones(1, 9, 2, 2), torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    cfg = {"lambda_fit": 16.0, "lambda_ce": 2.0, "lambda_rec": 0.5}
    losses = irn_losses(y, z, back, hr, torch.zeros(1, 3, 2, 2), **cfg)
    assert losses["forw_fit"].item() == 16 * 12
    assert losses["forw_ce"].item() == 2 * 36
    assert abs(losses["back_rec"].item() - 0.5 * 48 * math.sqrt(1 + 1e-6)) < 1e-4
