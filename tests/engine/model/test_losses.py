import math

import numpy as np
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


def test_through_a_codec_the_reconstruction_s_gradient_reaches_the_forward_pass_straight_through():
    """The textbook straight-through estimator, decoded + (Q(y) - Q(y).detach()), written out here: the same
    losses and the same gradients as the codec stage's custom op."""
    import engine
    from engine.data.codec import compress
    from engine.model.losses import network_passes
    from tests.official_irn import randomize

    model = randomize(engine.build(2, blocks_per_stage=1, growth=4), std=0.05)
    g = torch.Generator().manual_seed(0)
    hr, noise = torch.rand(2, 3, 16, 16, generator=g), torch.randn(2, 9, 8, 8, generator=g)

    def grads(channel):
        model.zero_grad()
        y, z, back = network_passes(model, hr, noise, channel=channel)
        charbonnier(back, hr).backward()
        return back.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    def textbook(q):
        decoded = torch.from_numpy(np.stack([jpeg_of(image) for image in q.detach()])).float() / 255
        return decoded + (q - q.detach())

    ours, expected = grads(lambda q: compress(q, "jpeg", 60)[0]), grads(textbook)
    assert torch.equal(ours[0], expected[0]) and not torch.equal(ours[0], grads(None)[0])
    for a, b in zip(ours[1], expected[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    cut = grads(lambda q: compress(q, "jpeg", 60)[0].detach())  # only the inverse's own use of the weights
    assert any(not torch.allclose(a, b) for a, b in zip(ours[1], cut[1], strict=True))


def jpeg_of(image):
    """A (3, H, W) image in [0, 1] through Pillow's JPEG at quality 60, as a (3, H, W) uint8 array."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buffer, "JPEG", quality=60)
    return np.asarray(Image.open(buffer).convert("RGB")).transpose(2, 0, 1)
