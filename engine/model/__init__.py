"""The model layer: IRN as a FrEIA graph (irn.py), the Rescaler API that builds and loads it (rescaler.py),
how it runs (execution.py: reference or fused kernels, the dense blocks' precision, torch.compile), backprop
by inversion (invertible_backprop.py) and the training losses (losses.py). It knows nothing of data or
training."""
