"""The shared-memory file that one rank of a node writes and every rank maps."""

import shutil
from collections import namedtuple

import numpy as np

from engine.data import crops, image_files, node_copy


def sets():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, 24, 3), dtype=np.uint8) for h in (16, 20)]
    train = crops.training_set(image_files.ImageSet(["a.png", "b.png"], images, {}), 2)
    val = image_files.ImageSet(["c.png"], [images[0][:10]], {"corrupt or unreadable": ["d.png"]})
    return train, val


def test_what_one_rank_writes_every_rank_reads_back_exactly(tmp_path):
    train, val = sets()
    size = node_copy.write(tmp_path / "shared", train, val)
    assert size == (tmp_path / "shared").stat().st_size >= node_copy.data_bytes(train, val)
    got_train, got_val = node_copy.read(tmp_path / "shared")
    assert got_train.names == train.names and got_val.names == val.names and got_val.skipped == val.skipped
    for a, b in zip(
        [*got_train.hrs, *got_train.lrs, *got_val.images], [*train.hrs, *train.lrs, *val.images], strict=True
    ):
        assert a.dtype == b.dtype and np.array_equal(a, b) and not a.flags.writeable


def test_a_folder_too_small_is_refused_before_writing_and_left_clean(tmp_path, monkeypatch):
    """A tmpfs too small is found before a byte is written."""
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(64 * 2**20, 64 * 2**20 - 1000, 1000))
    train, val = sets()
    assert node_copy.write(tmp_path / "shared", train, val) == 0
    assert not list(tmp_path.iterdir())
