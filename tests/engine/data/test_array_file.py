"""The array file that the data cache and the node's shared copy write and map."""

import errno
import os

import numpy as np
import pytest

from engine.data import array_file


def test_arrays_of_any_layout_come_back_as_they_were_written(tmp_path):
    """Strided, Fortran-ordered, big-endian, 0-d and empty arrays: each read back equal, in its own dtype
    and shape, from a file of exactly the size write returns."""
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)[::2, 1::3],
        np.asfortranarray(rng.standard_normal((5, 7)).astype(np.float32)),
        np.arange(5, dtype=">i4"),
        np.asarray(np.float32(2.5)),
        np.zeros((0, 4, 3), dtype=np.uint8),
        rng.standard_normal(3),
    ]
    size = array_file.write(tmp_path / "file", {"name": "odd"}, arrays)
    assert size == (tmp_path / "file").stat().st_size
    fields, read = array_file.read(tmp_path / "file")
    assert fields == {"name": "odd"}
    for got, wrote in zip(read, arrays, strict=True):
        assert got.shape == wrote.shape and got.dtype == wrote.dtype and np.array_equal(got, wrote)


@pytest.mark.parametrize("error, returned", [(errno.ENOSPC, 0), (errno.EIO, OSError)])
def test_a_write_that_fails_leaves_nothing_behind(tmp_path, monkeypatch, error, returned):
    """A full disk found only at the sync (NFS and delayed allocation report it there) returns 0; any other
    error is raised; neither leaves a file."""

    def fails(fd):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "fdatasync", fails)
    if returned is OSError:
        with pytest.raises(OSError, match=os.strerror(error)):
            array_file.write(tmp_path / "file", {}, [np.ones(8)])
    else:
        assert array_file.write(tmp_path / "file", {}, [np.ones(8)]) == returned
    assert not list(tmp_path.iterdir())
