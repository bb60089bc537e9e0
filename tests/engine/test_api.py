import pytest
import torch

import engine
from engine.errors import UserError
from tests.official_irn import OfficialIRN, randomize


@pytest.fixture(scope="module")
def x4_official():
    return randomize(OfficialIRN(4, blocks=8), std=0.02, seed=4)


def save(obj, tmp_path, name="w.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("wrap", ["plain", "module_prefix", "wrapped", "no_haar"])
def test_load_accepts_official_layouts_and_infers_the_scale(x4_official, tmp_path, wrap):
    state = x4_official.state_dict()
    if wrap == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "wrapped":
        state = {"state_dict": state, "iter": 5000}
    elif wrap == "no_haar":
        state = {k: v for k, v in state.items() if "haar" not in k}
    model = engine.load(save(state, tmp_path))
    assert model.scale == 4 and model.arch["blocks_per_stage"] == 8
    hr = torch.rand(1, 3, 16, 12)
    with torch.no_grad():
        lr, z = model.downscale(hr, quantize=False)
        out = x4_official(hr)
        assert torch.allclose(lr, out[:, :3], atol=1e-5) and torch.allclose(z, out[:, 3:], atol=1e-5)
        up = model.upscale(lr, z)
        assert torch.allclose(up, x4_official(torch.cat((lr, z), 1), rev=True)[:, :3], atol=1e-5)
        assert torch.allclose(up, hr, atol=1e-4)


def test_downscale_quantizes_and_upscale_samples_z():
    model = randomize(engine.build(2, blocks_per_stage=1))
    hr = torch.rand(2, 3, 8, 8)
    lr, z = model.downscale(hr)
    assert torch.equal(lr, torch.round(lr.clamp(0, 1) * 255) / 255) and z.shape == (2, 9, 4, 4)

    def seeded():
        return torch.Generator().manual_seed(3)

    a = model.upscale(lr, generator=seeded())
    assert torch.equal(a, model.upscale(lr, generator=seeded()))
    assert not torch.equal(a, model.upscale(lr, generator=seeded(), temperature=0.5))
    assert torch.equal(model.upscale(lr, temperature=0.0), model.upscale(lr, torch.zeros_like(z)))


def test_own_state_dict_round_trips(tmp_path):
    model = randomize(engine.build(8, blocks_per_stage=1))
    loaded = engine.load(save({"model": model.state_dict(), "step": 3}, tmp_path))
    assert loaded.arch == model.arch
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "shape, message",
    [((1, 3, 10, 8), "multiples of 4"), ((1, 1, 8, 8), "RGB"), ((3, 8, 8), "RGB")],
)
def test_bad_images_get_one_line_errors(shape, message):
    with pytest.raises(UserError, match=message) as err:
        engine.build(4).downscale(torch.rand(shape))
    assert "\n" not in str(err.value)


def test_unknown_layout_names_the_keys(tmp_path, x4_official):
    state = x4_official.state_dict()
    state["operations.1.F.extra.weight"] = torch.zeros(1)
    del state["operations.2.G.conv3.bias"]
    with pytest.raises(UserError, match=r"missing keys \['net.module_list.2.G.conv3.bias'\].*extra"):
        engine.load(save(state, tmp_path))


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"foo.weight": torch.zeros(3)}, "cannot infer the scale"),
        ({"iter": 3}, "no state dict"),
        ([1, 2], "no state dict"),
    ],
)
def test_checkpoints_that_are_not_irn_are_refused(tmp_path, obj, message):
    with pytest.raises(UserError, match=message):
        engine.load(save(obj, tmp_path))


def test_missing_checkpoint_and_bad_scale():
    with pytest.raises(UserError, match="no checkpoint"):
        engine.load("/nonexistent/IRN_x4.pth")
    with pytest.raises(UserError, match="power of two"):
        engine.build(3)
