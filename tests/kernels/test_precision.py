"""kernels/precision.py: whether fp32 convolutions may use TF32, set through either of PyTorch's APIs, read
back without the RuntimeError that the legacy flag raises once the two APIs are mixed."""

import torch

import kernels.dense as dense
from kernels.precision import tf32_convolutions


def test_the_new_api_is_read_without_a_mixed_api_error(fp32_precision_restored):
    for value, tf32 in (("tf32", True), ("ieee", False), ("none", False)):
        torch.backends.cudnn.conv.fp32_precision = value  # conv alone: convs and RNNs now differ
        assert tf32_convolutions() is tf32, value
    # "none" defers to the levels above, as the convolutions do
    torch.backends.cudnn.fp32_precision = "tf32"
    assert tf32_convolutions() is True
    torch.backends.cudnn.fp32_precision = "none"
    torch.backends.fp32_precision = "ieee"
    assert tf32_convolutions() is False


def test_the_legacy_flag_is_read_back(fp32_precision_restored):
    for allow in (True, False, True):
        torch.backends.cudnn.allow_tf32 = allow
        assert tf32_convolutions() is allow


def test_the_block_follows_the_new_api_and_its_variants_list_both_precisions(monkeypatch, fp32_precision_restored):
    """With conv.fp32_precision set alone (where the legacy flag raises), the op's fp32 launches take its
    precision, forward and backward (captured, not run); aot_variants lists both precisions whatever is
    set, and changes no setting."""
    from tests.kernels.test_dense import fast_params, reference_block

    torch.backends.cudnn.rnn.fp32_precision = "tf32"  # RNNs apart from convolutions: the mixed state
    launches = []
    monkeypatch.setattr(dense, "_run", launches.extend)
    block = reference_block(3, 9, 4)
    x = torch.randn(1, 3, 2, 3, device=block.conv1.weight.device)
    weights, biases = (list(map(torch.detach, params)) for params in fast_params(block))
    for value in ("ieee", "tf32"):
        torch.backends.cudnn.conv.fp32_precision = value
        launches.clear()
        out, features = dense.dense_block_forward(x, weights, biases, 0.2)
        dense.dense_block_backward(torch.randn_like(out), features, weights, 0.2, False, True)
        convs = [launch.constexprs["PRECISION"] for launch in launches if launch.kernel is not dense._pack_kernel]
        assert convs == [value] * 10
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    precisions = {c["PRECISION"] for *_, c in dense.aot_variants(blocks=[(3, 9, 2)]) if "PRECISION" in c}
    assert precisions == {"tf32", "ieee"}
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cudnn.rnn.fp32_precision != "ieee"  # untouched: still the mix
