"""The Invertible Rescaling Network on a FrEIA graph, with fused kernels and a profiler.

    import engine
    model = engine.build(4)                 # or engine.load("IRN_x4.pth")
    lr, z = model.downscale(hr)             # hr: (B, 3, H, W) in [0, 1]
    hr2 = model.upscale(lr)                 # z ~ N(0, 1)

The API is imported on first use, so that `engine.errors` (shared by every command, the report's too)
loads without torch or the model.
"""

import importlib

_HOME = {
    "Rescaler": "engine.model.rescaler",
    "build": "engine.model.rescaler",
    "load": "engine.model.rescaler",
    "quantize": "engine.model.irn",
    "UserError": "engine.errors",
}


def __getattr__(name):
    if name not in _HOME:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)


def __dir__():
    return sorted(list(globals()) + list(_HOME))


__all__ = list(_HOME)
