"""The public API: build or load a Rescaler, then downscale and upscale images with it."""

import math
import pickle
import re
from pathlib import Path

import torch
import torch.nn as nn

from engine.errors import UserError
from engine.model import crm, irn
from engine.model.invertible_backprop import run_inverting
from engine.model.irn import IMAGE_CHANNELS, LEARNED_DOWNSAMPLING, build_graph, official_blocks, stages


class Rescaler(nn.Module):
    """An IRN: forward turns an HR image into (LR, z), the inverse turns (LR, z) back into HR."""

    def __init__(self, scale, blocks_per_stage=None, growth=32, clamp=1.0):
        super().__init__()
        if blocks_per_stage is None:  # the official recipe's: 8 after each Haar, 12 at x3
            blocks_per_stage = official_blocks(scale)
        self.arch = dict(scale=scale, blocks_per_stage=blocks_per_stage, growth=growth, clamp=clamp)
        self.scale = scale
        self.net = build_graph(scale, blocks_per_stage, growth, clamp)
        # engine/model/execution.py sets it: how training runs, not what the network is
        self.invertible_backprop = False

    def forward(self, x, rev=False):
        # The invertible stream stays fp32 even under an outer autocast; the dense blocks choose
        # their own precision (engine/model/irn.py).
        with torch.autocast(x.device.type, enabled=False):
            # the backward recomputes activations from outputs (engine/model/invertible_backprop.py)
            if self.invertible_backprop:
                return run_inverting(self.net, x, rev)
            return self.net(x, rev=rev, jac=False)[0]

    def z_channels(self):
        return IMAGE_CHANNELS * (self.scale**2 - 1)

    def downscale(self, hr, quantize=True):
        """hr (B,3,H,W) in [0,1] -> (lr, z); lr is 8-bit quantised unless quantize=False."""
        check_image(hr, self.scale, "hr")
        out = self(hr)
        lr, z = out[:, :IMAGE_CHANNELS], out[:, IMAGE_CHANNELS:]
        return (irn.quantize(lr) if quantize else lr), z

    def upscale(self, lr, z=None, temperature=1.0, generator=None):
        """(lr, z) -> hr; z=None draws z ~ N(0, temperature^2)."""
        check_image(lr, 1, "lr")
        b, _, h, w = lr.shape
        if z is None:
            z = torch.randn(b, self.z_channels(), h, w, generator=generator, device=lr.device, dtype=lr.dtype)
            z = z * temperature
        elif z.shape != (b, self.z_channels(), h, w):
            raise UserError(
                f"z must have shape {(b, self.z_channels(), h, w)} for this lr at x{self.scale}, got {tuple(z.shape)}"
            )
        return self(torch.cat((lr, z), 1), rev=True)[:, :IMAGE_CHANNELS]


def check_image(x, multiple, name):
    """One-line errors for inputs the network cannot take."""
    if x.dim() != 4 or x.shape[1] != IMAGE_CHANNELS:
        raise UserError(
            f"{name} must be a (B, 3, H, W) RGB tensor, got shape {tuple(x.shape)}; "
            "convert grayscale/RGBA images to RGB first"
        )
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise UserError(
            f"{name} is {h}x{w}, but H and W must be multiples of {multiple} at this scale; crop or pad to "
            f"{h - h % multiple}x{w - w % multiple} or {-(-h // multiple) * multiple}x{-(-w // multiple) * multiple}"
        )


def build(scale, **overrides):
    """A fresh, officially initialised IRN for `scale` (2, 4, 8, ... or 3)."""
    try:
        return Rescaler(scale, **overrides)
    except ValueError as err:
        raise UserError(str(err)) from None


# --- loading -------------------------------------------------------------------------------

_WRAPPERS = ("model", "state_dict", "params", "netG", "params_ema")
_OFFICIAL = re.compile(r"^operations\.(\d+)\.(.+)$")
_OURS = re.compile(r"^net\.module_list\.(\d+)\.(.+)$")


def load(path, device=None):
    """The network of this project's checkpoint or of an official release `.pth`: a Rescaler, scale inferred
    (and the coupling clamp, which the weights do not tell, from this project's checkpoint: 1.0 otherwise);
    or, from a CRM's weights (the IRN-Compression release's `.pth`, a CRM run's checkpoint), the CRM
    (engine/model/crm.py), which restores a decoded LR in [0, 1]."""
    model = from_checkpoint(read_checkpoint(checkpoint_file(path)))
    return model.to(device) if device is not None else model


def checkpoint_file(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; give the path of a .pt/.pth file")
    return path


def from_checkpoint(obj):
    """The network (a Rescaler or a CRM) that a checkpoint's contents describe."""
    state = unwrap_state_dict(obj)
    if crm.holds_crm(state):
        return crm.from_state_dict(state)
    arch = obj.get("arch") if isinstance(obj, dict) else None
    return from_state_dict(state, arch.get("clamp", 1.0) if isinstance(arch, dict) else 1.0)


def load_with_crm(path, crm_path=None, device=None):
    """(Rescaler, CRM or None): the IRN of `path` (an IRN's weights, or a CRM run's checkpoint, which holds the
    frozen IRN it was trained on beside the CRM), and the CRM of `crm_path` or of that run."""
    path = checkpoint_file(path)
    obj = read_checkpoint(path)
    network = from_checkpoint(obj)
    if isinstance(network, crm.CRM):
        if not isinstance(obj.get("irn"), dict) or crm_path:
            raise UserError(
                f"{path} is a CRM, not an IRN: give the IRN it restores for with --checkpoint and the CRM with --crm"
            )
        irn, restorer = from_checkpoint(obj["irn"]), network
    else:
        irn, restorer = network, load(crm_path) if crm_path else None
    if restorer is not None and not isinstance(restorer, crm.CRM):
        raise UserError(f"{crm_path} holds an IRN, not a CRM: give a CRM's weights with --crm")
    if device is not None:
        irn, restorer = irn.to(device), None if restorer is None else restorer.to(device)
    return irn, restorer


class DamagedCheckpoint(UserError):
    """A checkpoint file cut short (a crash or a full disk while it was written, an interrupted copy)."""


def read_checkpoint(path):
    """What a .pt/.pth file holds, loaded with weights_only=True (tensors and plain data, never code); a file
    that cannot be loaded is a UserError naming why: cut short (DamagedCheckpoint), written by a newer torch,
    holding objects weights_only refuses (named), or not a PyTorch file at all."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except EOFError:
        raise DamagedCheckpoint(f"{path} is cut short (it ends before its data does): a damaged copy") from None
    except PermissionError:
        raise UserError(f"cannot read {path}: permission denied") from None
    except OSError as err:  # a zip whose records point past its end (torch seeks there)
        raise DamagedCheckpoint(f"{path} is cut short or damaged ({err.strerror or type(err).__name__})") from None
    except RuntimeError as err:
        if "maximum supported version" in str(err):
            raise UserError(
                f"{path} was written by a newer torch than this {torch.__version__}; upgrade torch"
            ) from None
        if "zip archive" in str(err):
            raise DamagedCheckpoint(f"{path} is cut short or damaged (its zip archive is incomplete)") from None
        raise UserError(f"cannot read {path} as a PyTorch checkpoint (RuntimeError: {_first_line(err)})") from None
    except pickle.UnpicklingError as err:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if refused:
            raise UserError(
                f"{path} holds an object of type {refused[1]}, which torch.load(weights_only=True) refuses to load "
                "(unpickling it could run code); this project's and the official release's checkpoints hold only "
                "tensors and plain data: if you trust the file, save its state dict from a weights_only=False load"
            ) from None
        raise UserError(f"{path} is not a PyTorch checkpoint (not a file torch.save wrote)") from None
    except (KeyError, IndexError, ValueError, UnicodeDecodeError):  # the legacy unpickler reading other bytes
        raise UserError(f"{path} is not a PyTorch checkpoint (not a file torch.save wrote)") from None


def _first_line(err):
    return str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__


def unwrap_state_dict(obj):
    """The tensor dict inside an official or project checkpoint, with any `module.` prefix removed."""
    while isinstance(obj, dict) and not _holds_tensors(obj):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not _holds_tensors(obj):
        raise UserError(
            "the checkpoint holds no state dict of IRN or CRM weights (keys like operations.1.F.conv1.weight or "
            "conv_first.weight)"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _holds_tensors(d):
    return any(torch.is_tensor(v) for v in d.values())


def from_state_dict(state, clamp=1.0):
    """Build the network the weights describe (with this coupling clamp) and load them; official keys are
    mapped to ours."""
    mapped = {}
    for key, value in state.items():
        m = _OFFICIAL.match(key) or _OURS.match(key)
        mapped[f"net.module_list.{m[1]}.{m[2]}" if m else key] = value
    model = build(**infer_arch(mapped), clamp=clamp)
    expected = model.state_dict()
    for key, value in expected.items():  # fixed Haar weights may be left out of a release
        if key.endswith("haar_weights"):
            mapped.setdefault(key, value)
    missing = [k for k in expected if k not in mapped]
    unexpected = [k for k in mapped if k not in expected]
    if missing or unexpected:
        raise UserError(
            f"unknown state dict layout: missing keys {missing[:3]}, unexpected keys {unexpected[:3]}; "
            "expected an IRN checkpoint of this project or of the official release"
        )
    bad = [k for k in expected if expected[k].shape != mapped[k].shape]
    if bad:
        raise UserError(
            f"weight {bad[0]} has shape {tuple(mapped[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)}"
        )
    model.load_state_dict(mapped)
    return model


def infer_arch(state):
    """Scale, blocks per stage and growth from the weights: the learnable downsampling's matrix
    (operations.0.conv_weights, s^2 x s^2) gives the scale where there is one, else the widest
    coupling block (3 * 4^k channels after k Haar stages)."""
    block_input = re.compile(r"^net\.module_list\.(\d+)\.F\.conv1\.weight$")
    blocks = {int(m[1]): state[k].shape for k in state if (m := block_input.match(k))}
    if not blocks:
        raise UserError(
            "cannot infer the scale: the checkpoint has no coupling-block weights "
            "(keys like operations.1.F.conv1.weight)"
        )
    channels = max(IMAGE_CHANNELS + shape[1] for shape in blocks.values())
    growth = next(iter(blocks.values()))[0]
    matrix = state.get("net.module_list.0.conv_weights")
    if matrix is not None:
        scale = math.isqrt(matrix.shape[0]) if matrix.dim() == 2 and matrix.shape[0] == matrix.shape[1] else 0
        if scale not in LEARNED_DOWNSAMPLING or channels != IMAGE_CHANNELS * scale**2:
            raise UserError(
                f"cannot infer the scale: a learnable downsampling matrix of shape {tuple(matrix.shape)} before "
                f"blocks of {channels} channels; only x3 (9x9, 27 channels) is built with one"
            )
        return dict(scale=scale, blocks_per_stage=len(blocks), growth=growth)
    n_stages = round(math.log(channels / IMAGE_CHANNELS, 4))
    if IMAGE_CHANNELS * 4**n_stages != channels or len(blocks) % n_stages:
        raise UserError(
            f"cannot infer the scale: the widest block has {channels} channels, not 3 * 4^k after Haar stages "
            "(and there is no learnable downsampling, operations.0.conv_weights, as at x3)"
        )
    return dict(scale=2**n_stages, blocks_per_stage=len(blocks) // n_stages, growth=growth)


__all__ = ["Rescaler", "build", "load", "load_with_crm", "from_state_dict", "check_image", "stages"]
