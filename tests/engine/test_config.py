import pytest

from engine import config
from engine.errors import UserError


def test_official_recipes():
    x4 = config.load_file("irn_x4")
    assert (x4["crop"], x4["batch_size"], x4["lr"], x4["weight_decay"], x4["steps"]) == (144, 16, 2e-4, 1e-5, 500000)
    assert x4["lr_milestones"] == [100000, 200000, 300000, 400000] and x4["lr_gamma"] == 0.5
    assert (x4["grad_clip"], x4["seed"], x4["lambda_fit"], x4["lambda_ce"], x4["lambda_rec"]) == (10.0, 10, 16.0, 1.0, 1.0)
    assert config.load_file("irn_x2")["lambda_fit"] == 4.0 and config.load_file("irn_x8")["lambda_fit"] == 64.0
    assert config.load_file("demo")["scale"] == 4


def test_overrides_of_any_key_and_types():
    cfg, _ = config.resolve(["--config", "irn_x2", "--lr", "1e-3", "--lr-milestones", "5,7", "--fast-kernels", "--crop", "96"])
    assert cfg["lr"] == 1e-3 and cfg["lr_milestones"] == [5, 7] and cfg["fast_kernels"] is True and cfg["crop"] == 96
    assert cfg["scale"] == 2 and cfg["config"] == "irn_x2"


def test_unknown_key_names_close_matches():
    with pytest.raises(UserError, match="did you mean --batch-size"):
        config.resolve(["--batchsize", "4"])
    with pytest.raises(UserError, match="no config 'irn_x3'"):
        config.resolve(["--config", "irn_x3"])


@pytest.mark.parametrize("text, seconds", [("11h50m", 42600), ("90m", 5400), ("30s", 30), ("2h", 7200), ("", None)])
def test_durations(text, seconds):
    assert config.parse_duration(text) == seconds


def test_bad_duration_and_window():
    with pytest.raises(UserError, match="11h50m"):
        config.parse_duration("soon")
    with pytest.raises(UserError, match="START:STOP"):
        config.parse_window("5", "py-spy")
    assert config.parse_window("3:9", "py-spy") == (3, 9)
