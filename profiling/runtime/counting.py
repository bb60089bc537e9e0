"""A census of one training step's ops, counted on fake tensors: FLOPs, GPU kernel launches and bytes.

`StepCounter` is used as the step's phase timer (`with counter.phase("forward"): ...`) while the
step runs under torch's FakeTensorMode, so nothing is computed and no GPU is needed. Every aten op
the step dispatches (the backward's included) is counted once:

- FLOPs: torch.utils.flop_counter's formulas (2 FLOPs per multiply-add), custom ops included when
  they register one (kernels/*.py do).
- bytes: every input and output tensor of the op read or written once, at its dtype's size; views
  move nothing. A lower bound of the traffic, and the one a fused kernel can reach. A custom op that
  runs several kernels counts what each of them moves (the `traffic` table the caller passes).
- kernel launches: KERNELS below, what PyTorch launches on a CUDA GPU for each aten op; a custom op
  counts its own launches (the `launches` table the caller passes).

Each op falls in a category: the forward op that made it (the backward's ops inherit their forward
op's category through the autograd node running them), or, outside the network, its phase.
"""

import math
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

# Ops that launch no kernel and move no bytes: views, metadata, allocation.
FREE = {
    "alias", "as_strided", "detach", "expand", "permute", "select", "slice", "split", "split_with_sizes",
    "squeeze", "t", "transpose", "unbind", "unsqueeze", "view", "_unsafe_view", "_reshape_alias", "unfold",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh", "_local_scalar_dense",
    "device", "is_same_size", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "set_",
}  # fmt: skip

# Kernels PyTorch launches on a CUDA GPU per aten op, where it is not one.
KERNELS = {
    # cuDNN's convolution, then its bias added by a second kernel
    "convolution": lambda args: 2 if args[2] is not None else 1,
    # input, weight and bias gradients: one kernel each that the output mask asks for
    "convolution_backward": lambda args: sum(bool(m) for m in args[-1]),
}
# multi_tensor_apply (foreach ops, fused Adam) launches one kernel per chunk of tensors: how many fit in
# one launch's arguments depends on how many tensor lists it walks together (its depth).
TENSORS_PER_LAUNCH = {1: 110, 2: 64, 3: 48, 4: 36, 5: 30}

CONVOLUTIONS = {"conv2d", "convolution", "conv_transpose2d"}


@dataclass
class Counts:
    flops: int = 0
    bytes: int = 0
    kernels: int = 0
    ops: int = 0

    def add(self, flops, nbytes, kernels):
        self.flops += flops
        self.bytes += nbytes
        self.kernels += kernels
        self.ops += 1


@dataclass
class Census:
    """One training step, counted: totals and per category. A typed record that goes into census.json."""

    flops_per_step: int
    bytes_per_step: int
    kernels_per_step: int
    ops_per_step: int
    categories: dict = field(default_factory=dict)  # name -> {"flops", "bytes", "kernels", "ops"}
    setting: dict = field(default_factory=dict)  # what was counted: scale, batch, crop, precision, fast kernels

    @property
    def intensity(self):
        """FLOPs per byte moved: below a GPU's FLOP/s per byte/s, the step is memory-bound there."""
        return self.flops_per_step / self.bytes_per_step if self.bytes_per_step else 0.0

    def to_json(self):
        return asdict(self) | {"intensity": self.intensity}


PHASE_CATEGORIES = {"h2d": "data", "loss": "loss", "optimizer": "optimizer"}


def forward_category(name, args, kwargs, phase):
    """The category of an op by its torch or aten name, arguments and the step's phase."""
    if phase in PHASE_CATEGORIES:
        return PHASE_CATEGORIES[phase]
    if name.startswith("irn::dense"):
        return "dense block (fused)"
    if name.startswith("irn::"):
        return "Haar and coupling"
    if name in CONVOLUTIONS:  # the Haar transform is a grouped convolution, the dense blocks' are not
        return "conv" if _groups(name, args, kwargs) == 1 else "Haar and coupling"
    if name == "cat":
        return "concatenation"
    if name.startswith("leaky_relu"):
        return "activation"
    return "Haar and coupling"


def _groups(name, args, kwargs):
    position = {"convolution": 8, "conv2d": 6, "conv_transpose2d": 6}[name]
    return kwargs.get("groups", args[position] if len(args) > position else 1)


def _written_in_place(func, args):
    """What an op mutates without returning it (fused Adam, in-place foreach ops): its writes. An op that
    returns what it wrote counts it as its output already."""
    if func._schema.returns:
        return []
    specs = func._schema.arguments
    return _tensors([a for a, spec in zip(args, specs, strict=False) if spec.alias_info and spec.alias_info.is_write])


def _bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def _tensors(tree):
    flat, _ = torch.utils._pytree.tree_flatten(tree)
    return [t for t in flat if isinstance(t, torch.Tensor)]


def _function_name(func):
    """'conv2d' for torch.nn.functional.conv2d, 'irn::coupling_forward' for a custom op."""
    if isinstance(func, torch._ops.OpOverload):
        return func._schema.name.removeprefix("aten::")
    if isinstance(func, torch._ops.OpOverloadPacket):
        return func._qualified_op_name.removeprefix("aten::")
    return getattr(func, "__name__", str(func))


class _Tagger(TorchFunctionMode):
    """Above autograd: marks each autograd node with its forward op's category, for its backward ops."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        category = forward_category(_function_name(func), args, kwargs, self.counter.current_phase)
        previous, self.counter.forward_category = self.counter.forward_category, category
        try:
            out = func(*args, **kwargs)
        finally:
            self.counter.forward_category = previous
        for t in _tensors(out):
            _tag(t.grad_fn, category)
        return out


def _tag(node, category):
    """Mark `node` and the untagged nodes behind it (made inside the same call, such as autocast's
    casts) with `category`: their backward ops belong to it."""
    stack = [node]
    while stack:
        node = stack.pop()
        if node is None or "census" in node.metadata:
            continue
        node.metadata["census"] = category
        stack.extend(next_node for next_node, _ in node.next_functions)


class _Dispatch(TorchDispatchMode):
    """Below autograd: every aten op, forward and backward, counted into its category."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.counter.count(func, args, kwargs, out)
        return out


class StepCounter:
    """Counts a step's ops by category; use it as the step's phase timer, under FakeTensorMode."""

    def __init__(self, launches=None, traffic=None):
        self.launches = launches or {}  # custom op name -> fn(args) -> kernels it launches
        self.traffic = traffic or {}  # custom op name -> fn(args) -> bytes its kernels move
        self.current_phase, self.forward_category = None, None
        self.by_category = defaultdict(Counts)
        self.unknown_kernels = set()

    @contextmanager
    def phase(self, name):
        previous, self.current_phase = self.current_phase, name
        try:
            yield
        finally:
            self.current_phase = previous

    def note(self, name, ms, clock=None):
        """The timer interface's overlap figures (all-reduce time): nothing to count."""

    @contextmanager
    def counting(self):
        with _Tagger(self), _Dispatch(self):
            yield self

    def category(self, name, args, kwargs):
        if self.current_phase == "backward":
            if name in ("add", "add_"):
                return "gradient accumulation"  # the autograd engine summing two gradients of one tensor
            node = torch._C._current_autograd_node()
            if node is not None and "census" in node.metadata:
                return node.metadata["census"]  # the forward op's category
        return self.forward_category or forward_category(name, args, kwargs, self.current_phase)

    def count(self, func, args, kwargs, out):
        namespace, _, name = func._schema.name.rpartition("::")
        if namespace in ("prim", "profiler") or namespace == "aten" and name in FREE:
            return
        full = func._schema.name if namespace != "aten" else name
        flops = (
            flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
            if func._overloadpacket in flop_registry
            else 0
        )
        if full in self.traffic:
            moved = self.traffic[full](args)
        else:
            moved = _bytes(_tensors((args, kwargs))) + _bytes(_tensors(out)) + _bytes(_written_in_place(func, args))
        self.by_category[self.category(full, args, kwargs)].add(int(flops), moved, self.kernels(full, namespace, args))

    def kernels(self, name, namespace, args):
        if namespace != "aten":
            if name in self.launches:
                return self.launches[name](args)
            self.unknown_kernels.add(name)
            return 1
        if name in KERNELS:
            return KERNELS[name](args)
        lists = [a for a in args if isinstance(a, list | tuple) and a and isinstance(a[0], torch.Tensor)]
        if name.startswith(("_foreach_", "_fused_")) and lists:
            return math.ceil(len(lists[0]) / TENSORS_PER_LAUNCH[min(len(lists), 5)])
        return 1

    def census(self, setting=None):
        categories = {name: asdict(c) for name, c in sorted(self.by_category.items(), key=lambda kv: -kv[1].bytes)}
        total = {key: sum(c[key] for c in categories.values()) for key in ("flops", "bytes", "kernels", "ops")}
        return Census(total["flops"], total["bytes"], total["kernels"], total["ops"], categories, setting or {})
