"""The profiling runtime, what the trainer runs beside each step: the phase timer (timer.py), the GPU (or
process) sampler (gpu_sampler.py), py-spy and torch.profiler captures (captures.py, flamegraph.py), a
step's census on fake tensors (counting.py), the device probe (probe.py) and the dashboards' mirrors
(mirrors.py: TensorBoard, Weights & Biases). It writes the run folder through profiling/records.py and knows
nothing of IRN."""
