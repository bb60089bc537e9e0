"""torch.distributed for the trainer: process group from torchrun's environment, DDP, and rank agreement.

Under `torchrun --nproc_per_node N -m engine.train`, every rank runs the same loop on its share of the
global batch; NCCL on GPUs, gloo on CPUs. Without torchrun everything here is a no-op for rank 0 of 1.
"""

import os
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from engine.errors import UserError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    # A CPU (gloo) group for the loop's control decisions, so that deciding to stop never waits for
    # the GPU; None when the default group already is gloo.
    control: object = field(default=None, compare=False, repr=False)

    @property
    def main(self):
        return self.rank == 0

    @property
    def active(self):
        return self.world > 1


def init():
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible; lower --nproc_per_node"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    control = dist.new_group(backend="gloo") if backend == "nccl" else None
    return Ranks(rank, world, local_rank, control)


def shutdown(ranks):
    if ranks.active and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj, ranks):
    """Rank 0's `obj` on every rank (a run folder's path, say)."""
    if not ranks.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, ranks):
    """Every rank's `obj`, in rank order, on every rank."""
    if not ranks.active:
        return [obj]
    out = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj, ranks):
    """Every rank's `obj`, in rank order, on rank 0; None on the others. A CPU collective every rank joins."""
    if not ranks.active:
        return [obj]
    out = [None] * ranks.world if ranks.main else None
    dist.gather_object(obj, out, dst=0, group=ranks.control)
    return out


def first_on_each_node(load, ranks):
    """`load()` on each node's first rank, then on its other ranks, which find what it made (the data
    cache's entries); None on every rank unless it gave something on every rank, so that the ranks fall
    back to another way together. The ranks wait on the CPU group: for as long as the first builds."""
    if not ranks.active:
        return load()
    made = load() if ranks.local_rank == 0 else None
    if any_rank(ranks.local_rank == 0 and made is None, ranks):
        return None
    if ranks.local_rank != 0:
        made = load()
    return None if any_rank(made is None, ranks) else made


def same_on_every_rank(value, ranks, what):
    """Raise a UserError on every rank unless `value` is rank 0's on every rank; `what` names the value (a
    data set's files): ranks that read different data would train on different samples for one index."""
    if not ranks.active:
        return
    values = [None] * ranks.world
    dist.all_gather_object(values, value, group=ranks.control)
    if differing := [rank for rank, v in enumerate(values) if v != values[0]]:
        raise UserError(
            f"rank {differing[0]} found {what} than rank 0 (files that changed while the job started, or "
            "that one node cannot read): make every node see the same files, then start the job again"
        )


def any_rank(flag, ranks):
    """True on every rank if it is true on any (all ranks stop at the same step); a CPU collective."""
    if not ranks.active:
        return bool(flag)
    t = torch.tensor([1 if flag else 0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=ranks.control)
    return bool(t.item())


def mean_over_ranks(values, ranks):
    """All-reduced mean of a tensor of per-rank values, so every rank takes the same decisions."""
    if ranks.active:
        dist.all_reduce(values)
        values /= ranks.world
    return values


def weights_agree(model, ranks):
    """Whether every rank holds the same weights (a float64 checksum of all parameters, compared)."""
    with torch.no_grad():
        checksum = sum(float(p.double().sum()) + float(p.double().pow(2).sum()) for p in model.parameters())
    sums = gather(checksum, ranks)
    return all(s == sums[0] for s in sums)


class AllReduceTime:
    """Time of each step's gradient all-reduces: the union of the spans from each bucket's readiness to
    its completion (buckets queue behind each other; summing their spans would count the wait twice).

    With NCCL the clock is the GPU's: a CUDA event on the compute stream when the bucket is handed over, and
    one recorded in the future's callback, which runs on a stream that waits for the collective; the pairs are
    read one step late, after the host's wait on that step's values (engine/training/step.py), so they have
    completed and reading them waits for nothing. With gloo the clock is the host's: the collective runs on
    the CPU, and the callback fires when it has finished. Buckets overlap the backward pass: this is time
    spent communicating, not time added to the step.
    """

    def __init__(self, cuda):
        self.clock = "cuda" if cuda else "host"
        self.spans, self.waiting = [], []

    def begin(self):
        if self.clock == "host":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def end(self, start):
        if self.clock == "host":
            self.spans.append((start, time.perf_counter()))
        else:
            event = torch.cuda.Event(enable_timing=True)
            event.record()  # on the callback's stream, after the all-reduce
            self.spans.append((start, event))

    def take(self):
        """The milliseconds of the step whose all-reduces have completed: this one on the host clock,
        the previous one on the GPU's."""
        done, self.spans = self.spans, []
        if self.clock == "cuda":
            done, self.waiting = self.waiting, done
        if not done:
            return 0.0
        origin = done[0][0]
        if self.clock == "host":
            spans = [((a - origin) * 1e3, (b - origin) * 1e3) for a, b in done]
        else:  # each event's time from the first bucket's start, on the GPU's clock
            spans = [(origin.elapsed_time(a) if a is not origin else 0.0, origin.elapsed_time(b)) for a, b in done]
        return union_length(spans)


def union_length(spans):
    """The length covered by (start, end) intervals, overlaps counted once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def timed_allreduce(timer, bucket):
    """A DDP communication hook: the default averaging all-reduce, timed into `timer`."""
    start = timer.begin()
    tensor = bucket.buffer().div_(dist.get_world_size())
    future = dist.all_reduce(tensor, async_op=True).get_future()

    def done(fut):
        timer.end(start)
        return fut.value()[0]

    return future.then(done)


def wrap(model, ranks, device):
    """DDP around `model` with the timing hook; returns (ddp, all-reduce timer)."""
    # No buffer broadcast before each forward: IRN's buffers (the Haar permutations) are constant, so the
    # broadcast would only add a collective to every step, and make a fast rank wait for a slow one in its
    # forward instead of in the gradients' all-reduce, where the per-rank table looks for stragglers.
    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
    )
    timer = AllReduceTime(device.type == "cuda")
    ddp.register_comm_hook(timer, timed_allreduce)
    return ddp, timer
