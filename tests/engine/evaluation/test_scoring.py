"""The scoring pass's summary: means over images per seed, then over seeds."""

import pytest

from engine.evaluation.scoring import SCORES, summarise, z_settings


def rows_of(scores_per_image):
    """Rows as score_images makes them: per image, per setting, one score dict per seed."""
    return [{"lr_psnr_y": lr, "T=1": [dict.fromkeys(SCORES, s) for s in seeds]} for lr, seeds in scores_per_image]


def test_means_over_images_then_mean_and_spread_over_seeds():
    settings = z_settings("sample", [1.0], samples=2)
    summary = summarise(rows_of([(30.0, [10.0, 20.0]), (40.0, [30.0, 60.0])]), settings)
    # seed 0: images 10 and 30 -> 20; seed 1: 20 and 60 -> 40; over seeds: 30 +- stdev(20, 40)
    t1 = summary["settings"]["T=1"]
    assert t1["samples"] == 2 and t1["psnr_y"] == 30.0 and t1["psnr_y_std"] == pytest.approx(14.1421356)
    assert summary["lr_psnr_y"] == 35.0


def test_no_images_summarise_to_no_scores():
    summary = summarise([], z_settings("sample", [0.0, 1.0], samples=3))
    assert summary["lr_psnr_y"] is None
    assert all(s["samples"] == 0 and s["psnr_y"] is None for s in summary["settings"].values())
