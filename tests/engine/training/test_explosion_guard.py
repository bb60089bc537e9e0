"""The explosion guard's rule on sequences shaped like IRN's own, and a corrupt sample planted in a real run."""

import numpy as np
import pytest
import torch

from engine import train
from engine.data import crops
from engine.training.explosion_guard import ExplosionGuard
from profiling.records import read_jsonl
from tests.conftest import TINY

CLIP = 10.0


def guard(tmp_path, window=200):
    return ExplosionGuard(tmp_path, factor=10.0, window=window, max_bad=3, image_names=["a"], clip=CLIP)


def batch():
    return {"image": torch.zeros(1, dtype=torch.long), "box": torch.zeros(1, 4, dtype=torch.long)}


def judge(g, losses, norms):
    return [
        g.check(step, {"loss": loss}, norm, batch())
        for step, (loss, norm) in enumerate(zip(losses, norms, strict=True))
    ]


def test_ordinary_early_training_is_not_an_explosion(tmp_path):
    """A falling loss while the raw grad norm swings between 1e3 and 1e5 (IRN's early steps; all clipped to 10)."""
    rng = np.random.default_rng(0)
    losses = list(np.geomspace(2400, 60, 300))
    norms = list(10 ** rng.uniform(3, 5, 300))
    assert set(judge(guard(tmp_path), losses, norms)) == {"ok"}
    assert not (tmp_path / "explosions.jsonl").exists()


def test_a_loss_that_jumps_is_recorded_with_its_batch(tmp_path):
    losses = [100.0] * 30 + [5000.0] + [100.0] * 5
    events = judge(guard(tmp_path), losses, [1e4] * len(losses))
    assert events.count("spike") == 1 and events[30] == "spike"
    (record,) = read_jsonl(tmp_path / "explosions.jsonl")
    assert record["step"] == 30 and record["kind"] == "loss > 10x running median" and record["grad_norm"] == 1e4
    assert (tmp_path / record["batch_file"]).is_file()


def test_an_update_that_grows_past_the_clip_from_small_norms_is_recorded(tmp_path):
    """Late in training, norms under the clip are the updates themselves: one 50x larger is a spike."""
    norms = [0.1] * 30 + [5.0] + [0.1] * 3
    events = judge(guard(tmp_path), [50.0] * len(norms), norms)
    assert events.count("spike") == 1 and events[30] == "spike"
    assert read_jsonl(tmp_path / "explosions.jsonl")[0]["kind"] == "update > 10x running median"


def test_a_non_finite_step_is_skipped_and_three_in_a_row_stop_the_run(tmp_path):
    g = guard(tmp_path)
    assert judge(g, [100.0] * 12, [1e4] * 12) == ["ok"] * 12
    assert g.check(12, {"loss": float("nan")}, 1e4, batch()) == "skipped"
    assert g.check(13, {"loss": 100.0}, float("inf"), batch()) == "skipped"
    with pytest.raises(Exception, match="3 non-finite steps in a row"):
        g.check(14, {"loss": float("inf")}, 1e4, batch())


def test_a_window_shorter_than_the_history_it_needs_still_judges(tmp_path):
    """--explosion-window 5: the median of the last 5 losses judges from the 6th step on."""
    losses = [100.0] * 6 + [5000.0]
    assert judge(guard(tmp_path, window=5), losses, [1e4] * len(losses))[-1] == "spike"


def test_a_run_whose_every_step_so_far_was_non_finite_resumes(tmp_path):
    """A checkpoint after only skipped steps holds an empty history; it loads as one, not as an old format."""
    g = guard(tmp_path)
    g.check(0, {"loss": float("nan")}, 1e4, batch())
    resumed = guard(tmp_path)
    resumed.load_state_dict(g.state_dict())
    assert {k: list(v) for k, v in resumed.history.items()} == {"loss": [], "update": []}
    assert resumed.bad_in_row == 1


def test_a_corrupt_sample_planted_in_a_run_is_the_one_step_recorded(image_folder, in_tmp, monkeypatch):
    """Sample 21 (the 11th step's second, batch 2) gets a corrupt LR reference; every other step trains as usual."""
    real = crops.CropDataset.__getitem__

    def corrupt_21(self, index):
        sample = real(self, index)
        if index == 21:
            sample["lr_ref"] = sample["lr_ref"] * 1000.0
        return sample

    monkeypatch.setattr(crops.CropDataset, "__getitem__", corrupt_21)
    train.main([*TINY, "--data", str(image_folder), "--steps", "16", "--name", "planted"])
    events = read_jsonl("runs/planted/explosions.jsonl")
    assert [(e["step"], e["kind"]) for e in events] == [(11, "loss > 10x running median")]
