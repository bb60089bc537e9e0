"""Fused or cuDNN per dense-block shape (engine/model/dense_choice.py), chosen on a CPU with a stand-in timer:
the shapes a step meets, each timed once per candidate, each block set to the faster, the choices recorded."""

import pytest
import torch

import engine
from engine.model import dense_choice, execution
from engine.model.dense_choice import cudnn_dense_block
from engine.model.irn import DenseBlock
from kernels.dense import dense_block


def tiny_model():
    torch.manual_seed(0)
    return execution.use_fast_kernels(engine.build(2, blocks_per_stage=1, growth=4))


class StandInTimer:
    """Times nothing: the fused kernels are 1 ms on blocks with 3 input channels (G and H) and 3 ms on the
    others, cuDNN 2 ms on all. Records what it was asked."""

    def __init__(self):
        self.asked = []

    def __call__(self, name, block, x):
        self.asked.append((name, tuple(x.shape)))
        return {"cudnn": 2.0, "fused": 1.0 if block.conv1.in_channels == 3 else 3.0}[name]


def test_auto_times_each_shape_once_and_runs_every_block_on_the_faster():
    model, timer = tiny_model(), StandInTimer()
    hr = torch.zeros(2, 3, 8, 8)
    choices = dense_choice.choose(model, hr, "auto", timer)
    # x2 with one block: F maps 9 -> 3, G and H 3 -> 9, all on the 2 x 4 x 4 Haar bands
    assert sorted((c.shape, c.c_out, c.chosen) for c in choices) == [
        ((2, 3, 4, 4), 9, "fused"),
        ((2, 9, 4, 4), 3, "cudnn"),
    ]
    assert sorted(timer.asked) == sorted((name, c.shape) for c in choices for name in ("fused", "cudnn"))
    for c in choices:
        assert (c.fused_ms, c.cudnn_ms) == ((1.0, 2.0) if c.chosen == "fused" else (3.0, 2.0))
        assert c.to_json()["shape"] == list(c.shape) and c.dtype == "float32"
    blocks = [m for m in model.modules() if isinstance(m, DenseBlock)]
    assert {m.conv1.in_channels: m.fast_op for m in blocks} == {3: dense_block, 9: cudnn_dense_block}


@pytest.mark.parametrize("mode, op", [("fused", dense_block), ("cudnn", cudnn_dense_block)])
def test_a_forced_choice_times_nothing(mode, op):
    model = tiny_model()

    def no_timer(*args):
        raise AssertionError("a forced choice times nothing")

    choices = dense_choice.choose(model, torch.zeros(1, 3, 8, 8), mode, no_timer)
    assert {c.chosen for c in choices} == {mode} and all(c.fused_ms is None for c in choices)
    assert all(m.fast_op is op for m in model.modules() if isinstance(m, DenseBlock))


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_cudnn_block_is_the_reference_block_in_the_inputs_layout(channels_last):
    torch.manual_seed(1)
    block = DenseBlock(5, 7, growth=4)
    for conv in block.convs():
        torch.nn.init.normal_(conv.weight, std=0.3)
    x = torch.randn(2, 5, 6, 4)
    x = x.to(memory_format=torch.channels_last) if channels_last else x
    weights, biases = [c.weight for c in block.convs()], [c.bias for c in block.convs()]
    out, expected = cudnn_dense_block(x, weights, biases), block.reference(x.contiguous())
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5 * expected.abs().max().item())  # fp32 sums' order
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
