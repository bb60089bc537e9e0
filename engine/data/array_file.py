"""A file of arrays that readers memory-map: the node's shared copy (node_copy.py) and the data cache's
entries (cache.py).

The layout: an 8-byte little-endian length, a JSON index of that length, then the arrays' raw bytes from
the next 64-byte boundary. The index holds the writer's own fields and, under "arrays", each array's
offset (from the first array's start), shape and dtype, so any reader (np.memmap with those offsets, say)
can map it. Here files are mapped with torch.from_file, which keeps no file descriptor open: a process
maps the thousands of entries of a large data set without meeting its limit on open files.
"""

import errno
import json
import os
import re
import shutil

import numpy as np
import torch


class Damaged(ValueError):
    """A file that is not whole: cut short (a build killed before its rename, a disk that lost it), or
    with an index that does not parse or a length of it past the file's end."""


SPACE_LACKING = (errno.ENOSPC, errno.EDQUOT)  # a full disk or tmpfs, or a quota met


def write(path, fields, arrays, mode=0o600):
    """`arrays` with the index `fields` into a new file at `path`, created with `mode` (less the umask), and
    synced to the disk. Returns the file's size, or 0 when the space is lacking (nothing is left behind
    then). Written with write(2), not through a mapping: a full disk or tmpfs is an ENOSPC here, where a
    mapping's writer dies of SIGBUS, and no page of the file is faulted in only to be overwritten."""
    arrays = [np.asarray(a, order="C") for a in arrays]
    ends = np.cumsum([a.nbytes for a in arrays], dtype=np.int64).tolist()
    offsets = [end - a.nbytes for end, a in zip(ends, arrays, strict=True)]
    described = [{"offset": o, "shape": a.shape, "dtype": a.dtype.str} for o, a in zip(offsets, arrays, strict=True)]
    header = json.dumps({**fields, "arrays": described}).encode()
    start = arrays_start(len(header))
    size = start + (ends[-1] if ends else 0)
    if shutil.disk_usage(path.parent).free < size:  # refused before a byte is written
        return 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as err:
        if err.errno in SPACE_LACKING:  # no inode left
            return 0
        raise
    try:
        with open(fd, "wb") as f:
            f.write(len(header).to_bytes(8, "little") + header + bytes(start - 8 - len(header)))
            for a in arrays:
                f.write(a.reshape(-1).view(np.uint8))  # its bytes, as they lie (none for an empty array)
            f.flush()
            os.fdatasync(f.fileno())  # whole on the disk before the caller renames it into place
    except BaseException as err:  # nothing left behind, whatever stopped the write
        path.unlink()
        if isinstance(err, OSError) and err.errno in SPACE_LACKING:
            return 0
        raise
    return size


def arrays_start(header_length):
    """Where the arrays begin: after the 8-byte length and the header, aligned to 64 bytes."""
    start = 8 + header_length
    return start + -start % 64


def read(path):
    """(the writer's fields, the arrays as read-only views of one mapping) of a file that `write` made.
    Raises Damaged when the file is not whole, OSError when it cannot be read or mapped."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        length = int.from_bytes(f.read(8), "little")
        if 8 + length > size:  # a garbled length: reading it would ask for up to 2**64 bytes
            raise Damaged(f"{path}: {size} bytes, its first 8 say an index of {length} bytes")
        try:
            index = json.loads(f.read(length))
            arrays = [(a["offset"], tuple(a["shape"]), np.dtype(a["dtype"])) for a in index.pop("arrays")]
        except (ValueError, KeyError, TypeError) as err:  # JSON, a missing key, a bad dtype, a cut header
            raise Damaged(f"{path}: unreadable index ({err})") from None
    start = arrays_start(length)
    end = max((start + o + dtype.itemsize * int(np.prod(shape)) for o, shape, dtype in arrays), default=start)
    if size != end:
        raise Damaged(f"{path}: {size} bytes, its index describes {end}")
    # A private mapping: the pages are the page cache's, shared by every process that maps the file.
    data = mapped(path, size).numpy()
    views = [np.ndarray(shape, dtype=dtype, buffer=data, offset=start + o) for o, shape, dtype in arrays]
    for view in views:
        view.flags.writeable = False
    return index, views


def mapped(path, size):
    """The file as a uint8 tensor over a private mapping. A mapping refused (ENOMEM once the process holds
    vm.max_map_count of them) raises the OSError it is, not the RuntimeError torch makes of it."""
    try:
        return torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8)
    except RuntimeError as err:
        refused = re.search(r"unable to mmap .*\((\d+)\)", str(err))
        if not refused:
            raise
        code = int(refused[1])
        raise OSError(code, os.strerror(code), str(path)) from None
