"""Fused or cuDNN per dense-block shape (engine/model/dense_choice.py), chosen on a CPU with a stand-in timer and
tuner: the shapes a step meets, each tuned and timed once per candidate, each block set to the faster, the
choices and tiles recorded, rank 0's taken on every rank."""

from dataclasses import replace

import pytest
import torch

import engine
from engine.model import dense_choice, execution
from engine.model.dense_choice import cudnn_dense_block
from engine.model.irn import DenseBlock, IRNCoupling
from kernels import dense
from kernels.dense import dense_block, dense_blocks


def tiny_model():
    torch.manual_seed(0)
    return execution.use_fast_kernels(engine.build(2, blocks_per_stage=1, growth=4))


class StandInTimer:
    """Times nothing: the fused kernels are 1 ms on blocks with 3 input channels (G and H) and 3 ms on the
    others, cuDNN 2 ms on all. Records what it was asked: the op, the shape, how many blocks in one call."""

    def __init__(self):
        self.asked = []

    def __call__(self, name, blocks, x):
        self.asked.append((name, tuple(x.shape), len(blocks)))
        return {"cudnn": 2.0, "fused": 1.0 if blocks[0].conv1.in_channels == 3 else 3.0}[name]


def stand_in_tuner(asked):
    def tune(blocks, x):
        asked.append(tuple(x.shape))
        return {"forward": [64] * 5, "backward": [32] * 5, "backward_no_dx": [32] * 5}

    return tune


def test_auto_times_each_shape_once_and_runs_every_block_on_the_faster():
    model, timer, tuned = tiny_model(), StandInTimer(), []
    hr = torch.zeros(2, 3, 8, 8)
    choices = dense_choice.choose(model, hr, "auto", timer, stand_in_tuner(tuned))
    assert sorted(tuned) == sorted(c.shape for c in choices)  # each shape tuned once, before it is timed
    assert all(c.to_json()["tiles"]["forward"] == [64] * 5 for c in choices)
    # x2 with one block: F maps 9 -> 3, G and H 3 -> 9, all on the 2 x 4 x 4 Haar bands
    assert sorted((c.shape, c.c_out, c.chosen) for c in choices) == [
        ((2, 3, 4, 4), 9, "fused"),
        ((2, 9, 4, 4), 3, "cudnn"),
    ]
    # G and H are timed (and tuned) together, as they run; F alone
    assert sorted(timer.asked) == sorted((name, c.shape, c.subnets) for c in choices for name in ("fused", "cudnn"))
    assert sorted((c.c_out, c.subnets) for c in choices) == [(3, 1), (9, 2)]
    for c in choices:
        assert (c.fused_ms, c.cudnn_ms) == ((1.0, 2.0) if c.chosen == "fused" else (3.0, 2.0))
        assert c.to_json()["shape"] == list(c.shape) and c.dtype == "float32"
    blocks = [m for m in model.modules() if isinstance(m, DenseBlock)]
    assert {m.conv1.in_channels: m.fast_op for m in blocks} == {3: dense_block, 9: cudnn_dense_block}
    assert all(m.fast_subnets is dense_blocks for m in model.modules() if isinstance(m, IRNCoupling))


@pytest.mark.parametrize("mode, op", [("fused", dense_block), ("cudnn", cudnn_dense_block)])
def test_a_forced_choice_times_nothing_and_only_the_fused_kernels_are_tuned(mode, op):
    model, tuned = tiny_model(), []

    def no_timer(*args):
        raise AssertionError("a forced choice times nothing")

    choices = dense_choice.choose(model, torch.zeros(1, 3, 8, 8), mode, no_timer, stand_in_tuner(tuned))
    assert {c.chosen for c in choices} == {mode} and all(c.fused_ms is None for c in choices)
    assert all(m.fast_op is op for m in model.modules() if isinstance(m, DenseBlock))
    assert len(tuned) == (len(choices) if mode == "fused" else 0)
    assert all((c.tiles is None) == (mode == "cudnn") for c in choices)
    # each coupling's H and G in one call where both are fused
    fast_subnets = dense_blocks if mode == "fused" else None
    assert all(m.fast_subnets is fast_subnets for m in model.modules() if isinstance(m, IRNCoupling))


def test_every_rank_takes_rank_zeros_kernels_and_tiles(monkeypatch):
    """Under torch.distributed (two ranks, stood in for): this rank's timer prefers cuDNN everywhere, rank 0's
    choices (fused everywhere) and tile configs are what it runs."""
    model = tiny_model()
    rank_zero = ([], {("a launch key",): {"BLOCK_M": 128}})

    def from_rank_zero(box, src):
        choices, _ = box[0]
        rank_zero[0].extend(choices.items())
        box[0] = ({key: replace(c, chosen="fused") for key, c in choices.items()}, rank_zero[1])

    monkeypatch.setattr(dense, "_CHOSEN", {})
    monkeypatch.setattr(dense_choice.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dense_choice.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dense_choice.dist, "broadcast_object_list", from_rank_zero)
    choices = dense_choice.choose(
        model, torch.zeros(1, 3, 8, 8), "auto", lambda name, *_: {"fused": 2.0, "cudnn": 1.0}[name]
    )
    assert {c.chosen for _, c in rank_zero[0]} == {"cudnn"}  # this rank's own
    assert {c.chosen for c in choices} == {"fused"} and dense.chosen_configs() == rank_zero[1]
    assert all(m.fast_op is dense_block for m in model.modules() if isinstance(m, DenseBlock))


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_cudnn_block_is_the_reference_block_in_the_inputs_layout(channels_last):
    torch.manual_seed(1)
    block = DenseBlock(5, 7, growth=4)
    for conv in block.convs():
        torch.nn.init.normal_(conv.weight, std=0.3)
    x = torch.randn(2, 5, 6, 4)
    x = x.to(memory_format=torch.channels_last) if channels_last else x
    weights, biases = block.weights_and_biases()
    out, expected = cudnn_dense_block(x, weights, biases), block.reference(x.contiguous())
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5 * expected.abs().max().item())  # fp32 sums' order
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_a_tile_candidate_is_timed_per_launch_over_launches_back_to_back(monkeypatch):
    """The events bracket LAUNCHES_TIMED launches (stood in for: a timed call of 40 ms), and one launch is their
    mean."""
    launches = []
    monkeypatch.setattr(dense_choice, "_gpu_ms", lambda run: (run(), 40.0)[1])
    assert dense_choice._launch_ms(lambda: launches.append(1)) == 40.0 / dense_choice.LAUNCHES_TIMED
    assert len(launches) == dense_choice.LAUNCHES_TIMED > 1


def _choose_on_a_rank(rank, store_file, results):
    """One of two real gloo ranks: each prefers other kernels and other tiles (rank 0: fused, 128-pixel forward
    tiles; rank 1: cuDNN, 64), then runs what choose() leaves it with, on launches of its own making."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
    dense._FORWARD_CONFIGS, dense._BACKWARD_CONFIGS = dense._GPU_FORWARD_CONFIGS, dense._GPU_BACKWARD_CONFIGS
    favourite = 128 if rank == 0 else 64

    def tune(blocks, x):
        weights, biases = zip(*(block.weights_and_biases() for block in blocks), strict=True)
        launches = [launch for group in dense.block_launches(x, weights, biases, True) for launch in group]
        dense.tune(launches, lambda run: 1.0 if run.args[1].kwargs["BLOCK_M"] == favourite else 2.0)

    def timer(name, blocks, x):
        return {"fused": 1.0, "cudnn": 2.0}[name] if rank == 0 else {"fused": 2.0, "cudnn": 1.0}[name]

    model = tiny_model()
    choices = dense_choice.choose(model, torch.zeros(1, 3, 8, 8), "auto", timer, tune)
    tiles = []
    for c in choices:
        block = DenseBlock(c.shape[1], c.c_out, c.growth)
        blocks = [block.weights_and_biases()] * c.subnets
        weights, biases = [w for w, _ in blocks], [b for _, b in blocks]
        forward = dense.block_launches(torch.zeros(c.shape), weights, biases, True)[0]  # TF32: tiles
        tiles.append(dense.tile_sizes(forward))
    results[rank] = ([c.chosen for c in choices], tiles)
    torch.distributed.destroy_process_group()


def test_two_real_ranks_run_rank_zeros_kernels_and_tiles(tmp_path):
    """The choices and the tile keys cross a real gloo broadcast: rank 1 runs fused blocks with 128-pixel forward
    tiles, rank 0's preferences, on launches it made itself (so the keys match across processes)."""
    with torch.multiprocessing.Manager() as manager:
        results = manager.dict()
        torch.multiprocessing.spawn(_choose_on_a_rank, args=(str(tmp_path / "store"), results), nprocs=2)
        results = dict(results)
    assert results[1] == results[0]
    chosen, tiles = results[1]
    assert set(chosen) == {"fused"} and tiles and all(128 in t for t in tiles)  # rank 1 alone never takes 128
