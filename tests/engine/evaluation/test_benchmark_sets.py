"""engine.evaluation.benchmark_sets: the paper's sets found in benchmark folders of every common layout, HR images
only."""

import numpy as np
import pytest
from PIL import Image

from engine.errors import UserError
from engine.evaluation import benchmark_sets

HR_SIZE, LR_SIZE = (32, 32), (16, 16)  # 32x32 also serves an x8 checkpoint (SSIM's 11x11 window after 8 px borders)


def save_image(path, size, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_benchmark(root):
    """Paper sets in four layouts, two HR images each beside three LR ones never to be read; Manga109, not one."""
    for i in range(2):
        save_image(root / "Set5" / "HR" / f"bird{i}.png", HR_SIZE, i)  # EDSR's benchmark layout
        save_image(root / "B100" / "GTmod12" / f"{i}.png", HR_SIZE, 10 + i)  # BasicSR's
        for srf in (2, 4):  # Huang et al.'s: HR and LR side by side
            save_image(root / "Urban100" / f"image_SRF_{srf}" / f"img_{i}_SRF_{srf}_HR.png", HR_SIZE, 20 + i)
        save_image(root / "DIV2K" / "DIV2K_valid_HR" / f"080{i}.png", HR_SIZE, 30 + i)  # a plain folder, nested
        save_image(root / "Manga109" / f"m{i}.png", HR_SIZE, 40 + i)  # a set the paper does not report
    for i in range(3):
        save_image(root / "Set5" / "LR_bicubic" / "X2" / f"bird{i}x2.png", LR_SIZE, 50 + i)
        save_image(root / "B100" / "LRbicx2" / f"{i}.png", LR_SIZE, 60 + i)
        save_image(root / "Urban100" / "image_SRF_2" / f"img_{i}_SRF_2_LR.png", LR_SIZE, 70 + i)
        save_image(root / "DIV2K" / "DIV2K_valid_LR_bicubic" / "X2" / f"080{i}x2.png", LR_SIZE, 80 + i)
    return root


@pytest.fixture
def bench_root(tmp_path):
    return make_benchmark(tmp_path / "benchmark")


def test_a_benchmark_folder_is_found_under_the_papers_names(bench_root):
    sets, line = benchmark_sets.load_sets([str(bench_root)], scale=2, min_size=4)
    assert [s.name for s in sets] == ["Set5", "BSD100", "Urban100", "DIV2K val"]
    assert [s.paper_set for s in sets] == [s.name for s in sets]
    for s in sets:  # the HR images alone, never the LR ones beside them
        assert len(s.found.images) == 2 and {img.shape[:2] for img in s.found.images} == {HR_SIZE}
    assert [s.folder.relative_to(bench_root).as_posix() for s in sets] == [
        "Set5/HR",
        "B100/GTmod12",
        "Urban100/image_SRF_2",
        "DIV2K/DIV2K_valid_HR",
    ]
    assert "\n" not in line and f"{bench_root}: Set5 in Set5/HR (2 images)" in line
    assert "BSD100 in B100/GTmod12" in line and "not found: Set14" in line and "Manga109" not in line
    x4 = benchmark_sets.load_sets([str(bench_root)], scale=4, min_size=8)[0]
    assert x4[2].folder.name == "image_SRF_4"  # Huang et al.'s HR images cropped for the model's scale


def test_single_sets_and_plain_folders(bench_root, image_folder):
    sets, _ = benchmark_sets.load_sets(
        [str(bench_root / "Set5"), f"mine={bench_root / 'DIV2K' / 'DIV2K_valid_HR'}", str(image_folder)], 2, 4
    )
    assert [(s.name, s.paper_set) for s in sets] == [("Set5", "Set5"), ("mine", "DIV2K val"), ("hr", None)]
    assert sets[0].folder.name == "HR" and len(sets[0].found.images) == 2
    assert len(sets[2].found.images) == 3  # a plain folder: every image under it, subfolders too, as before
    (bench_root / "Set5" / "HR").rename(bench_root / "Set5" / "flat")  # no HR folder: its LR folder is left out
    flat = benchmark_sets.load_sets([str(bench_root / "Set5")], 2, 4)[0][0]
    assert len(flat.found.images) == 2 and "3 files in LR folders left out" in flat.note
    with pytest.raises(UserError, match="two sets are named Set5"):
        benchmark_sets.load_sets([str(bench_root), str(bench_root / "Set5")], 2, 4)
