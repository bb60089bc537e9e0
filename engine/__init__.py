"""irn-engine: the Invertible Rescaling Network on a FrEIA graph, with fused kernels and a profiler.

    import engine
    model = engine.build(4)                 # or engine.load("IRN_x4.pth")
    lr, z = model.downscale(hr)             # hr: (B, 3, H, W) in [0, 1]
    hr2 = model.upscale(lr)                 # z ~ N(0, 1)
"""
from engine.api import Rescaler, build, load
from engine.errors import UserError
from engine.irn import quantize

__all__ = ["Rescaler", "build", "load", "quantize", "UserError"]
