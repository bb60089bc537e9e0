"""The model layer: IRN as a FrEIA graph (irn.py), the compression restoration module (crm.py), the Rescaler
API that builds and loads them (rescaler.py), how they run (execution.py: reference or fused kernels, the
dense blocks' precision, torch.compile; dense_choice.py: fused or cuDNN per dense-block shape), backprop by
inversion (invertible_backprop.py) and the training losses (losses.py). It knows nothing of data or
training."""
