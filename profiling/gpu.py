"""A sampler thread that records GPU counters through NVML (or, without a GPU, the process's CPU and memory).

Each sample is one line of gpu.jsonl: {"t": seconds since start, "gpu": index, ...counters}.
"""

import os
import threading
import time


def _nvml():
    """The NVML module, initialised, or None with the reason."""
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return None, "NVML found no GPU"
        return pynvml, None
    except Exception as err:  # no library, no driver, no device: all mean "no GPU counters"
        return None, f"NVML unavailable ({type(err).__name__})"


def visible_indices(nvml):
    """NVML indices of the GPUs this process may use (CUDA_VISIBLE_DEVICES, if numeric)."""
    count = nvml.nvmlDeviceGetCount()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [int(v) for v in visible.split(",") if v.strip().isdigit()]
        if ids:
            return [i for i in ids if i < count]
    return list(range(count))


def read_gpu(nvml, handle):
    util = nvml.nvmlDeviceGetUtilizationRates(handle)
    mem = nvml.nvmlDeviceGetMemoryInfo(handle)
    sample = {"util": util.gpu, "mem_util": util.memory, "mem_used_mib": mem.used / 2**20}
    optional = {
        "power_w": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000,
        "sm_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
        "temp_c": lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
        "throttle": lambda: nvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle),
        "pcie_rx_kbs": lambda: nvml.nvmlDeviceGetPcieThroughput(handle, nvml.NVML_PCIE_UTIL_RX_BYTES),
        "pcie_tx_kbs": lambda: nvml.nvmlDeviceGetPcieThroughput(handle, nvml.NVML_PCIE_UTIL_TX_BYTES),
    }
    for key, read in optional.items():
        try:
            sample[key] = read()
        except Exception:  # a counter this GPU or driver does not expose
            pass
    return sample


class ProcessReader:
    """CPU share and resident memory of this process, from os.times and /proc."""

    def __init__(self):
        self.last = (time.monotonic(), _cpu_seconds())

    def read(self):
        now, cpu = time.monotonic(), _cpu_seconds()
        (t0, c0), self.last = self.last, (now, cpu)
        return {"cpu_percent": 100 * (cpu - c0) / max(now - t0, 1e-9), "rss_mib": _rss_mib()}


def _cpu_seconds():
    t = os.times()
    return t.user + t.system


def _rss_mib():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return None


class Sampler:
    """`with Sampler(sink, interval_ms):` samples in a daemon thread until the block ends."""

    def __init__(self, sink, interval_ms=100, nvml=None, log=print, devices=None):
        """`devices`: positions among the visible GPUs to sample (a rank's own), or None for all."""
        self.sink, self.interval = sink, interval_ms / 1000
        if nvml is None:
            nvml, reason = _nvml()
        else:
            reason = None
        self.nvml = nvml
        if nvml is not None:
            indices = visible_indices(nvml)
            indices = [indices[d] for d in devices] if devices is not None else indices
            self.handles = [(i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in indices]
            self.kind = "gpu"
        else:
            self.process = ProcessReader()
            self.kind = "process"
            log(f"GPU sampler: {reason}; recording this process's CPU use and memory instead")
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)

    def __enter__(self):
        self.start = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(timeout=5)

    def _run(self):
        while not self.stop_event.is_set():
            t = round(time.monotonic() - self.start, 3)
            for record in self.sample():
                self.sink.write({"t": t, **record})
            self.stop_event.wait(self.interval)

    def sample(self):
        if self.kind == "gpu":
            return [{"gpu": i, **read_gpu(self.nvml, h)} for i, h in self.handles]
        return [{"process": os.getpid(), **self.process.read()}]
