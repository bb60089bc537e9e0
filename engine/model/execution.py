"""How the model runs its ops: reference or fused kernels, the dense blocks' precision, compilation.

The swap changes which function the Haar, coupling and dense-block modules call, never their
weights, so one checkpoint serves every path.
"""

import re

import torch

from engine.errors import UserError
from engine.model.irn import DenseBlock, Haar, IRNCoupling
from kernels.precision import tf32_convolutions

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("default", "max-autotune", "reduce-overhead", "max-autotune-no-cudagraphs")
DEVICES = r"auto|cpu|cuda(:\d+)?"  # what --device takes, in every command
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def device_for(want):
    """The torch.device that a --device value names on this machine ("auto": this process's CUDA GPU, else the
    CPU); a value this machine cannot run is one line."""
    if not re.fullmatch(DEVICES, want):
        raise UserError(f"--device {want}: expected {DEVICE_CHOICES}")
    if want == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {want} needs a CUDA GPU, and none is visible; use --device cpu")
    device = torch.device(want)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {want}: only {torch.cuda.device_count()} GPUs are visible (cuda:0 to cuda:N-1)")
    return device


def use_fast_kernels(model, enabled=True, dense=True):
    """Route every Haar, coupling and (with `dense`) dense-block module of `model` to the Triton kernels,
    or back to the reference. Dense blocks of every kind (IRN's, the CRM's residual ones) run the same kernel,
    a coupling's H and G in one call (pair_subnets)."""
    from kernels.coupling import coupling
    from kernels.dense import dense_block
    from kernels.haar import haar

    # No kernel for x3's LearnedDownsampling: a small share of the step (python -m profiling.census --config irn_x3
    # --fast-kernels counts it)
    kernels = {IRNCoupling: coupling, Haar: haar, DenseBlock: dense_block if dense else None}
    for module in model.modules():
        for kind, kernel in kernels.items():
            if isinstance(module, kind):
                module.fast_op = kernel if enabled else None
    return pair_subnets(model)


def pair_subnets(model, enabled=True):
    """Run each coupling's H and G in one call of the fused op (kernels.dense.dense_blocks: the launches of one
    block, each with both blocks' programs) where both blocks run the fused kernels; else (or not `enabled`)
    one block after the other."""
    for module in model.modules():
        if isinstance(module, IRNCoupling):
            module.fast_subnets = _paired_op(module.H, module.G) if enabled else None
    return model


def _paired_op(h, g):
    """dense_blocks where both blocks run the fused dense_block in one compute dtype, else None."""
    if h.fast_op is None or h.fast_op is not g.fast_op or h.compute_dtype != g.compute_dtype:
        return None
    from kernels import dense

    return dense.dense_blocks if h.fast_op is dense.dense_block else None


def dense_kernels_unavailable(device):
    """Why the dense-block kernels do not run on `device` (None when they do)."""
    from kernels.dense import MIN_CAPABILITY

    major, minor = torch.cuda.get_device_capability(device)
    if 10 * major + minor < MIN_CAPABILITY:
        return (
            f"the dense blocks stay on cuDNN on this compute capability {major}.{minor} GPU "
            "(their kernels are tuned for 8.0 and newer); Haar and coupling run fused"
        )
    return None


def set_subnet_precision(model, precision):
    """Run every dense block in `precision` (fp32, bf16, fp16); the invertible stream stays fp32."""
    for module in model.modules():
        if isinstance(module, DenseBlock):
            module.compute_dtype = PRECISIONS[precision]
    return model


def use_invertible_backprop(model, enabled=True):
    """Train `model` with backprop by inversion (engine/model/invertible_backprop.py): each block's activations are
    recomputed from its output in the backward instead of being stored."""
    model.invertible_backprop = enabled
    return model


def configure_backends(cudnn_benchmark, tf32):
    """Process-wide settings every training step relies on (the trainer and the bench share them)."""
    torch.backends.cudnn.benchmark = cudnn_benchmark  # crops have one size: autotuned convs pay off
    # TF32 for fp32 convolutions: cuDNN's (the dense blocks, FrEIA's Haar convolution) and the fused
    # dense kernels follow it. The legacy flag sets convolutions and RNNs alike, the one state in which
    # PyTorch's own readers of that flag (torch.backends.cudnn.flags, inductor) do not raise; where a level
    # above (set through the per-op API) overrides it, the convolutions are set explicitly.
    torch.backends.cudnn.allow_tf32 = tf32
    if tf32_convolutions() != tf32:
        for level in (torch.backends.cudnn.conv, torch.backends.cudnn.rnn):
            level.fp32_precision = "tf32" if tf32 else "ieee"


def fast_kernels_unavailable(device):
    """Why the Triton kernels cannot run on `device` (None when they can)."""
    if torch.device(device).type != "cuda":
        return "the Triton kernels need a CUDA GPU; running the FrEIA reference ops instead"
    try:
        import triton  # noqa: F401  (only whether it imports)
    except ImportError:
        return "triton is not installed (pip install triton); running the FrEIA reference ops instead"
    return None


def compile_model(model, mode, device, **kwargs):
    """torch.compile for this network. On CPUs inductor's channels-last layout optimisation corrupts
    the heap in the backward of IRN at x4 and above (torch 2.13: 'free(): invalid next size'), so it
    is switched off there; it changes memory layouts only, never results."""
    if torch.device(device).type == "cpu":
        import torch._inductor.config as inductor_config

        inductor_config.layout_optimization = False
    return torch.compile(model, mode=mode, **kwargs)
