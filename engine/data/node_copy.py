"""One decoded copy of the data per node, in shared memory, for every rank on the node.

Eight ranks decoding their own copies of a data set (DIV2K's 800 images are several GB as uint8, plus their
float32 LR references) hold eight times its size and decode it eight times. Here the node's first rank decodes
once and writes the arrays into one file under /dev/shm (a tmpfs too small for them is found before a byte is
written, or by the write's ENOSPC); every rank of the node, the first included, then maps that file; once
all have, it is unlinked, so the memory lives exactly as long as the ranks and nothing is left behind by a
crash after the start. Loader workers, forked from their rank, share the same pages. Where /dev/shm cannot
hold the data (a container's 64 MB default, say), every rank decodes its own copy, as before. Training takes
this path where the data cache (cache.py) is off or cannot be written.
"""

import os
import socket
import uuid
from pathlib import Path

import torch.distributed as dist

from engine.data import array_file
from engine.data.crops import TrainingSet
from engine.data.image_files import ImageSet

SHM = Path("/dev/shm")


def load_once_per_node(load, ranks, log=print):
    """(training set, validation set) from `load()`: decoded by the node's first rank, mapped by the rest.
    `ranks`: this process's place (rank, local_rank, world, active) in the default process group."""
    if not ranks.active:
        return load()
    node = node_group(ranks)
    name = [f"irnscope-{uuid.uuid4().hex}"]
    dist.broadcast_object_list(name, src=0)  # rank 0's: one name per job
    name = name[0]
    path = (SHM if SHM.is_dir() else Path("/tmp")) / f"{name}-{socket.gethostname()}"
    shared = [None]
    if ranks.local_rank == 0:
        train, val = load()
        shared = [write(path, train, val)]
        ranks_here = dist.get_world_size(node)
        size = (shared[0] or data_bytes(train, val)) / 2**30
        if shared[0]:
            log(f"data decoded once for this node's {ranks_here} ranks, shared in {path} ({size:.2f} GiB)")
        else:
            log(f"{path.parent} cannot hold the data ({size:.2f} GiB): each rank decodes its own copy")
    dist.broadcast_object_list(shared, src=ranks.rank - ranks.local_rank, group=node)
    if not shared[0]:
        return (train, val) if ranks.local_rank == 0 else load()
    train, val = read(path)  # the first rank too: its decoded copy goes, the node keeps one
    dist.barrier(group=node)  # every rank holds its mapping: the name can go
    if ranks.local_rank == 0:
        path.unlink()
    return train, val


def node_group(ranks):
    """The ranks of this node (torchrun numbers them contiguously per node), as a CPU group."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world))
    group, _ = dist.new_subgroups(group_size=per_node, backend="gloo")
    return group


def data_bytes(train, val):
    return sum(a.nbytes for a in (*train.hrs, *train.lrs, *val.images))


def write(path, train, val):
    """All arrays of both sets into one file (array_file.py's layout). Returns the file's size, or 0 when
    the space is lacking (nothing is left behind then)."""
    fields = {
        "train": {"names": train.names, "skipped": train.skipped, "converted": train.converted},
        "val": {"names": val.names, "skipped": val.skipped, "converted": val.converted},
    }
    return array_file.write(path, fields, [*train.hrs, *train.lrs, *val.images])


def read(path):
    """The two sets of a file that `write` made, as read-only arrays over one shared mapping."""
    fields, arrays = array_file.read(path)
    train, val = fields["train"], fields["val"]
    n = len(train["names"])
    hrs, lrs, images = arrays[:n], arrays[n : 2 * n], arrays[2 * n :]
    return (
        TrainingSet(train["names"], hrs, lrs, train["skipped"], train["converted"]),
        ImageSet(val["names"], images, val["skipped"], val["converted"]),
    )
