"""The CRM against an independent re-statement of the official RRDBNet (tests/official_rrdb.py): its names and
parameter count, its outputs for seeded weights, loading, and its initialisation."""

import math

import pytest
import torch
import torch.nn.functional as F

import engine
from engine.errors import UserError
from engine.model import crm
from engine.model.rescaler import load_with_crm
from tests.official_irn import randomize
from tests.official_rrdb import OfficialRRDBNet, parameters


def test_the_official_crm_has_the_release_s_names_shapes_and_5_795_843_parameters():
    ours, official = crm.build(), OfficialRRDBNet(3, 3, nf=64, nb=8, gc=32)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in official.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == parameters(64, 8, 32) == 5_795_843


def test_the_release_s_pth_loads_with_engine_load_and_gives_its_outputs(tmp_path):
    arch = dict(nf=8, nb=2, gc=4)
    official = randomize(OfficialRRDBNet(**arch), std=0.1, seed=3)
    torch.save(official.state_dict(), tmp_path / "IRN-CRM.pth")  # as the release saves it: a bare state dict
    loaded = engine.load(tmp_path / "IRN-CRM.pth")
    assert isinstance(loaded, crm.CRM) and loaded.arch == dict(features=8, blocks=2, growth=4)
    x = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = official(x)
        assert out.std() > 0.01  # an output that varies, not a constant a wrong trunk could also give
        torch.testing.assert_close(loaded(x), out, rtol=1e-5, atol=1e-6)


def test_a_fresh_crm_s_residual_blocks_start_as_the_identity():
    """Every dense block's conv5 starts at zero, so each residual dense block passes its input, each RRDB
    gives 1.2 x its input, and the trunk of nb of them 1.2^nb x its input."""
    model = crm.build(features=8, blocks=3, growth=4)
    x = torch.rand(1, 3, 7, 6)
    f = F.conv2d(x, model.conv_first.weight, model.conv_first.bias, padding=1)
    trunk = F.conv2d(1.2**3 * f, model.trunk_conv.weight, model.trunk_conv.bias, padding=1)
    expected = F.conv2d(f + trunk, model.conv_last.weight, model.conv_last.bias, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


def test_dense_convs_are_initialised_kaiming_normal_times_0_1_with_zero_biases():
    torch.manual_seed(0)
    block = crm.build().RRDB_trunk[0].RDB2
    for k, conv in enumerate(block.convs()[:4]):
        fan_in = (64 + k * 32) * 9
        assert conv.weight.std().item() == pytest.approx(0.1 * math.sqrt(2 / fan_in), rel=0.05)
        assert abs(conv.weight.mean().item()) < 0.1 * math.sqrt(2 / fan_in) / 10 and not conv.bias.any()
    assert not block.conv5.weight.any() and not block.conv5.bias.any()


def test_a_crm_run_checkpoint_gives_its_irn_and_crm_and_a_lone_crm_says_what_to_do(tmp_path):
    irn = randomize(engine.build(2, blocks_per_stage=1, growth=4))
    restorer = randomize(crm.build(features=8, blocks=1, growth=4))
    irn_weights = {"model": irn.state_dict(), "arch": irn.arch}
    torch.save({"model": restorer.state_dict(), "arch": restorer.arch, "irn": irn_weights}, tmp_path / "run.pt")
    got_irn, got_crm = load_with_crm(tmp_path / "run.pt")
    for a, b in ((got_irn, irn), (got_crm, restorer)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    torch.save(restorer.state_dict(), tmp_path / "crm.pth")
    with pytest.raises(UserError, match="is a CRM, not an IRN: give the IRN it restores for with --checkpoint"):
        load_with_crm(tmp_path / "crm.pth")


def test_a_crm_missing_a_weight_is_one_line(tmp_path):
    state = crm.build(features=8, blocks=1, growth=4).state_dict()
    del state["trunk_conv.bias"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(UserError, match=r"unknown CRM layout: missing keys \['trunk_conv.bias'\]") as err:
        engine.load(tmp_path / "cut.pth")
    assert "\n" not in str(err.value)
