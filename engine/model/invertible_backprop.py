"""Backprop by inversion: a sequence of invertible modules whose backward keeps only its output.

`run_inverting(modules, x, rev)` returns what the plain sequence returns (FrEIA's SequenceINN with
jac=False: each module called as `module((x,), rev=rev, jac=False)`, in order, or in reverse order
with rev=True), bit for bit, because the forward is the same calls, run under no_grad. Autograd then
sees one node for the whole sequence, which saves only the sequence's output. Its backward walks the
modules from the last to the first; for each one it

  1. recomputes the module's input from its output with the module's inverse (no_grad),
  2. reruns the module's forward on that input under autograd, with the autocast state the forward
     had (the dense blocks pick their own compute dtype inside, from `compute_dtype`, as they did),
  3. back-propagates the incoming gradient through this one module (torch.autograd.grad), adding
     its parameters' gradients to the node's results, and moves on with the input's gradient.

The parameters are inputs of the node, so the engine accumulates their gradients into `.grad` through
their ordinary AccumulateGrad nodes: optimisers, clipping, GradScaler, DDP's hooks and
torch.autograd.grad(loss, params) see ordinary gradients. The two passes of a training step (HR ->
(LR, z), then (Q(LR), z') -> HR with rev=True) are two such nodes; they compose like any two ops, and
a parameter used by both gets the sum of both contributions before its AccumulateGrad runs, once.

Memory: the forward keeps one tensor per sequence for its backward (its output, which the training
step's losses keep views of anyway) instead of every module's activations (the dense blocks'
concatenated features, the coupling's intermediate tensors, every module's input): a fraction of a
percent of what standard backprop saves, whatever the depth and size. `saved_bytes` counts what a step
keeps for backward (each storage once, parameters left out) on fake tensors, so a full-size step is
counted without computing it: `python -m profiling.bench memory --batch 16 --crop 144` prints both
backprops' saved and peak bytes side by side at the x4 recipe's shape. The backward then holds one
module's activations at a time on top of that.

Cost: the backward runs one inverse and one more forward per module (the coupling's inverse runs the
same three dense blocks as its forward): about 5 forwards' work per pass instead of 3 (the same bench
prints the two step times and their ratio). The parameters' gradients reach their AccumulateGrad nodes
when the node's whole backward ends, not module by module, so DDP's all-reduce buckets are all ready
at the end of the backward instead of overlapping with it.

Numerics: the recomputed inputs are not the forward's inputs: every inverse rounds, and the error of
one module's recomputed input feeds the next inverse, so it grows from the output towards the first
module (the coupling's exp(-s) amplifies it more the larger the weights). Gradients are those of the
network at these slightly moved activations. `reconstruction_errors` measures it (the memory bench
prints it for both passes at its weights): about 1e-15 in fp64 and a few fp32 units in fp32, growing with
the weights' scale; the fp32 gradients then differ from standard backprop's by about as much as standard
fp32 differs from fp64 (tests/engine/model/test_invertible_backprop.py holds them to that). With bf16
dense blocks the inverse evaluates F, G and H as the forward did (same module, same compute dtype), but
on inputs a few fp32 roundings away, and one input bf16 rounding that goes the other way changes a dense
block's bf16 outputs by bf16 units (CPU bf16 convolutions accumulate in bf16): the recomputed inputs are
then off by the order of bf16's own error, and the gradients move from standard bf16 backprop's by less
than bf16 moves them from fp32's (tested).

Where it cannot be used:
  - Double backward (create_graph=True, e.g. gradient penalties): the node's backward is
    once_differentiable; back-propagating through its result raises.
  - Modules that are not exactly invertible, are random (dropout: no RNG state is replayed), keep
    state that changes between forward and backward (batch-norm statistics in training), or whose
    inverse writes into its input (detected: raises). The recomputed forward runs under the forward's
    autocast state; other global settings (deterministic algorithms, TF32) are read when it runs.
  - In-place changes of the sequence's output before backward: autograd's version check raises, as
    for any saved tensor.
  - torch.compile does not trace it. Dynamo turns an autograd.Function into a higher-order op only when
    it can trace its forward and backward; here it fails on the dense blocks' autocast context in the
    forward (torch 2.13: "setattr() is not supported on type autocast"), and the backward reruns
    modules and calls torch.autograd.grad. Left to itself, dynamo then breaks the graph ~10 times and
    compiles the modules' forwards frame by frame (no_grad graphs; the backward runs eagerly). So the
    node sits behind torch.compiler.disable: one graph break per pass, the sequence runs eagerly,
    forward and backward, the rest of the step compiles (backend="aot_eager": gradients equal eager
    ones; fullgraph=True raises on the break). Modules compiled one by one (torch.compile on each
    entry of module_list) do run compiled inside the wrapper.
  - Under no_grad or inference_mode, or when neither the input nor any parameter requires grad,
    it simply runs the sequence (nothing to save).
"""

import contextlib

import torch
from torch.autograd.function import once_differentiable


def run_inverting(modules, x, rev=False):
    """The output of invertible `modules` on `x` (reversed order with rev=True), as SequenceINN(x, rev,
    jac=False)[0] returns it; its backward recomputes each module's input by inversion instead of
    storing activations.

    modules: a FrEIA SequenceINN (without conditions) or a sequence of FrEIA invertible modules, in
    forward order (e.g. `Rescaler.net` or `Rescaler.net.module_list`).
    """
    order = _ordered(modules, rev)
    params = _trainable_parameters(order)
    if not order or not torch.is_grad_enabled() or not (x.requires_grad or params):
        return _run(order, x, rev)
    return _apply_inverting(x, order, rev, params)


@torch.compiler.disable
def _apply_inverting(x, order, rev, params):
    # dynamo cannot trace this node (see the module docstring): one deliberate graph break, run eagerly
    return _InvertingSequence.apply(x, order, rev, _AutocastState.capture(x.device.type), *params)


def reconstruction_errors(modules, x, rev=False):
    """How far the inputs a backward by inversion recomputes are from the true ones.

    Runs the sequence on `x` keeping every module's input, then inverts from the output exactly as the
    backward does (each inverse fed the previous recomputed input). Returns, for each module in the
    order the forward runs them, the largest absolute difference between its recomputed and its true
    input. No gradients; runs in the caller's autocast state, as the forward would.
    """
    order = _ordered(modules, rev)
    with torch.no_grad():
        inputs, out = [], x
        for module in order:
            inputs.append(out)
            out = _call(module, out, rev)
        errors = [0.0] * len(order)
        for k in reversed(range(len(order))):
            out = _invert(order[k], out, rev)
            errors[k] = (out - inputs[k]).abs().max().item()
    return errors


def saved_bytes(fn, *args, exclude=()):
    """(result of fn(*args), bytes of the tensors autograd saves for backward while it runs).

    Each storage counts once (a saved view of a saved tensor costs nothing more); tensors sharing
    storage with `exclude` (e.g. the model's parameters and buffers, which exist anyway) are left out.
    Works on fake tensors (FakeTensorMode), so a full-size step can be counted without computing it.
    """
    excluded = {t.untyped_storage()._cdata for t in exclude}
    seen, kept = {}, []

    def pack(t):
        storage = t.untyped_storage()
        if storage._cdata not in excluded and storage._cdata not in seen:
            seen[storage._cdata] = storage.nbytes()
            kept.append(t)  # keeps the storage alive, so its address is not reused while counting
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn(*args)
    return result, sum(seen.values())


class _InvertingSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, order, rev, autocast, *params):
        out = _run(order, x, rev)
        ctx.order, ctx.rev, ctx.autocast = order, rev, autocast
        slots = {id(p): i for i, p in enumerate(params)}  # where each parameter's gradient is returned
        ctx.params = [[(p, slots[id(p)]) for p in module.parameters() if id(p) in slots] for module in order]
        ctx.n_params = len(params)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        order, rev = ctx.order, ctx.rev
        param_grads = [None] * ctx.n_params
        wants_input_grad = ctx.needs_input_grad[0]
        for k in reversed(range(len(order))):
            module, params = order[k], [p for p, _ in ctx.params[k]]
            need_input = k > 0 or wants_input_grad
            if not (need_input or params):
                break  # the first module: no parameter and no input gradient wanted
            with ctx.autocast.restored():
                x = _invert(module, out, rev).detach().requires_grad_(need_input)
            out = None  # the output is no longer needed: its gradient and the rerun take over
            with torch.enable_grad(), ctx.autocast.restored():
                y = _call(module, x, rev)
            inputs = ([x] if need_input else []) + params
            if y.requires_grad:
                grads = torch.autograd.grad(y, inputs, grad, allow_unused=True)
            else:  # the output does not depend on anything that requires grad
                grads = [None] * len(inputs)
            del y
            for (_, i), g in zip(ctx.params[k], grads[len(inputs) - len(params) :], strict=True):
                if g is not None:
                    param_grads[i] = g if param_grads[i] is None else param_grads[i] + g
            grad = grads[0] if need_input else None
            if grad is None and need_input:
                grad = torch.zeros_like(x)
            out = x.detach()
        input_grad = grad if wants_input_grad else None
        return (input_grad, None, None, None, *param_grads)


class _AutocastState:
    """The autocast settings of the forward (for its device and the CPU), to rerun modules under."""

    def __init__(self, settings, cache):
        self.settings, self.cache = settings, cache

    @classmethod
    def capture(cls, device_type):
        settings = []
        for dt in dict.fromkeys((device_type, "cpu")):
            if torch.amp.is_autocast_available(dt):
                settings.append((dt, torch.is_autocast_enabled(dt), torch.get_autocast_dtype(dt)))
        return cls(settings, torch.is_autocast_cache_enabled())

    def restored(self):
        stack = contextlib.ExitStack()
        for dt, enabled, dtype in self.settings:
            stack.enter_context(torch.autocast(dt, dtype=dtype, enabled=enabled, cache_enabled=self.cache))
        return stack


def _ordered(modules, rev):
    conditions = getattr(modules, "conditions", None)
    if conditions is not None and any(c is not None for c in conditions):
        raise ValueError("run_inverting runs unconditional sequences only (this SequenceINN has conditions)")
    order = list(getattr(modules, "module_list", modules))
    return order[::-1] if rev else order


def _trainable_parameters(order):
    params = {}
    for module in order:
        for p in module.parameters():
            if p.requires_grad:
                params.setdefault(id(p), p)
    return list(params.values())


def _call(module, x, rev):
    return module((x,), rev=rev, jac=False)[0][0]


def _run(order, x, rev):
    for module in order:
        x = _call(module, x, rev)
    return x


def _invert(module, y, rev):
    """The input of `module` (run with `rev`) that gave `y`, without gradients."""
    version = y._version
    with torch.no_grad():
        x = _call(module, y, not rev)
    if y._version != version:
        raise RuntimeError(
            f"{type(module).__name__}'s inverse wrote into its input: it cannot run under run_inverting, "
            "whose backward inverts the saved output"
        )
    return x
