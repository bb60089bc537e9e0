"""A sampler thread that records the training GPU's counters through NVML (on the CPU, the process's CPU and memory).

Each sample is one line of gpu.jsonl:

    {"t": seconds since start, "clock": time.monotonic(), "gpu": CUDA index, "nvml_index": NVML index,
     "util": ..., ...counters}

The sampler reads only the training device(s), named by their CUDA index (what torch calls cuda:N in this
process, after CUDA_VISIBLE_DEVICES). CUDA and NVML number GPUs differently (CUDA fastest first unless
CUDA_DEVICE_ORDER=PCI_BUS_ID, NVML by PCI bus id, and NVML ignores CUDA_VISIBLE_DEVICES), so each CUDA
device is matched to its NVML handle by PCI location, or by UUID where torch does not expose the PCI ids.

PCIe throughput is different from the other counters: NVML measures it over a 20 ms window per query,
during which the call blocks, so it is read at most once per `pcie_period_s` (1 s): only the samples
taken then carry pcie_rx_kbs / pcie_tx_kbs (no stale value is repeated in between).
"""

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

PCIE_PERIOD_S = 1.0


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


# --- which GPU is which -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CudaId:
    """Where a CUDA device sits, as torch reports it: PCI (domain, bus, device) and UUID, each None if unknown.

    A domain of None matches any domain (torch exposing bus and device ids but not the domain)."""

    pci: tuple | None = None
    uuid: str | None = None


def torch_cuda_id(index):
    """The CudaId of cuda:`index` from torch.cuda.get_device_properties (pci_*_id attributes, uuid)."""
    props = torch.cuda.get_device_properties(index)
    pci = None
    bus, device = getattr(props, "pci_bus_id", None), getattr(props, "pci_device_id", None)
    if isinstance(bus, int) and isinstance(device, int):
        domain = getattr(props, "pci_domain_id", None)
        pci = (domain if isinstance(domain, int) else None, bus, device)
    uuid = getattr(props, "uuid", None)
    return CudaId(pci, _uuid_key(uuid) if uuid is not None else None)


def bus_id_text(domain, bus, device):
    """NVML's form of a PCI location: 'DDDDDDDD:BB:DD.0' (the function is always 0 for a GPU)."""
    return f"{domain:08X}:{bus:02X}:{device:02X}.0"


def _uuid_key(uuid):
    """A UUID as both sides can compare it: lower-case hex digits and dashes, without NVML's 'GPU-' prefix."""
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    text = text.strip().lower()
    return text.removeprefix("gpu-")


@dataclass(frozen=True)
class NvmlDevice:
    """One GPU as NVML sees it."""

    index: int
    handle: object
    pci: tuple | None  # (domain, bus, device)
    uuid: str | None

    @property
    def bus_id(self):
        return bus_id_text(*self.pci) if self.pci else None


def nvml_devices(nvml):
    """Every GPU NVML can open, in NVML's order, with its PCI location and UUID (None where NVML refuses)."""
    found = []
    for i in range(nvml.nvmlDeviceGetCount()):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
        except Exception:  # a GPU this process may not open (permissions, a lost device)
            continue
        try:
            info = nvml.nvmlDeviceGetPciInfo(handle)
            pci = (int(info.domain), int(info.bus), int(info.device))
        except Exception:
            pci = None
        try:
            uuid = _uuid_key(nvml.nvmlDeviceGetUUID(handle))
        except Exception:
            uuid = None
        found.append(NvmlDevice(i, handle, pci, uuid))
    return found


def visible_indices(nvml):
    """NVML indices in CUDA_VISIBLE_DEVICES (if numeric), else all: a guess at CUDA's numbering, the last resort."""
    count = nvml.nvmlDeviceGetCount()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [int(v) for v in visible.split(",") if v.strip().isdigit()]
        if ids:
            return [i for i in ids if i < count]
    return list(range(count))


@dataclass(frozen=True)
class Sampled:
    """A training device and the NVML device that is sampled for it."""

    cuda: int
    nvml: NvmlDevice
    matched_by: str  # "pci", "uuid" or "position" (a guess from CUDA_VISIBLE_DEVICES and NVML's order)


def match(nvml, indices, cuda_id=torch_cuda_id):
    """([Sampled] for the CUDA indices NVML has, [notes on the others and on guesses])."""
    table, notes, matched = nvml_devices(nvml), [], []
    for index in indices:
        try:
            want = cuda_id(index)
        except Exception as err:  # no such CUDA device, or no CUDA at all
            notes.append(f"cuda:{index} has no properties ({type(err).__name__}: {err}); not sampled")
            continue
        found, how = _look_up(nvml, table, want)
        if found is None:
            found, how = _find(table, want)
        if found is None:
            guess = visible_indices(nvml)
            found = next((d for d in table if index < len(guess) and d.index == guess[index]), None)
            if found is None:
                notes.append(f"cuda:{index} matches no GPU NVML can open; not sampled")
                continue
            how = "position"
            notes.append(
                f"cuda:{index} could not be matched by PCI bus id or UUID; sampling NVML GPU {found.index} "
                "by its position in CUDA_VISIBLE_DEVICES (wrong unless CUDA_DEVICE_ORDER=PCI_BUS_ID)"
            )
        matched.append(Sampled(index, found, how))
    return matched, notes


def _look_up(nvml, table, want):
    """(the NVML device NVML itself finds by `want`'s PCI bus id, else by its UUID, and which matched) or (None,
    None): NVML's own lookups, where the bus id's domain is known and the library has them."""
    attempts = []
    if want.pci is not None and want.pci[0] is not None:
        attempts.append(("pci", "nvmlDeviceGetHandleByPciBusId_v2", bus_id_text(*want.pci)))
    if want.uuid is not None:
        attempts.append(("uuid", "nvmlDeviceGetHandleByUUID", f"GPU-{want.uuid}"))
    for how, name, key in attempts:
        try:
            index = nvml.nvmlDeviceGetIndex(getattr(nvml, name)(key))
        except Exception:  # no such device, a library without the call, a device this process may not open
            continue
        found = next((d for d in table if d.index == index), None)
        if found is not None:
            return found, how
    return None, None


def _same_pci(want, have):
    domain, bus, device = want
    return (domain is None or domain == have[0]) and (bus, device) == (have[1], have[2])


def _find(table, want):
    """(the one NVML device at `want`'s PCI location, else with its UUID, and which matched) or (None, None),
    from NVML's table: where the bus id's domain is unknown (torch without pci_domain_id), any domain matches."""
    if want.pci is not None:
        hits = [d for d in table if d.pci is not None and _same_pci(want.pci, d.pci)]
        if len(hits) == 1:
            return hits[0], "pci"
    if want.uuid is not None:
        hits = [d for d in table if d.uuid == want.uuid]
        if len(hits) == 1:
            return hits[0], "uuid"
    return None, None


def cuda_indices(devices):
    """The CUDA indices `devices` names: None -> the current CUDA device (none without CUDA); a torch.device or
    'cuda:N' / 'cpu' text; an int; or a list of these. A CPU device names none."""
    if devices is None:
        return [torch.cuda.current_device()] if torch.cuda.is_available() else []
    if isinstance(devices, (list, tuple)):
        return [i for d in devices for i in cuda_indices(d)]
    if isinstance(devices, int):
        return [devices]
    device = torch.device(devices)
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


# --- reading counters -------------------------------------------------------------------------------


class GpuReader:
    """The counters of one GPU. PCIe throughput (two queries that block ~20 ms each) is read at most once per
    `pcie_period_s`; the samples in between leave it out."""

    def __init__(self, nvml, handle, pcie_period_s=PCIE_PERIOD_S):
        self.nvml, self.handle, self.pcie_period = nvml, handle, pcie_period_s
        self.pcie_at = None
        reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        self.optional = {
            "power_w": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000,
            "sm_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
            "temp_c": lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
            "throttle": lambda: reasons(handle),
        }
        self.pcie = {
            "pcie_rx_kbs": lambda: nvml.nvmlDeviceGetPcieThroughput(handle, nvml.NVML_PCIE_UTIL_RX_BYTES),
            "pcie_tx_kbs": lambda: nvml.nvmlDeviceGetPcieThroughput(handle, nvml.NVML_PCIE_UTIL_TX_BYTES),
        }

    def read(self, now):
        util = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
        mem = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
        sample = {"util": util.gpu, "mem_util": util.memory, "mem_used_mib": mem.used / 2**20}
        optional = dict(self.optional)
        if self.pcie_at is None or now - self.pcie_at >= self.pcie_period:
            self.pcie_at = now
            optional.update(self.pcie)
        for key, read in optional.items():
            try:
                sample[key] = read()
            except Exception:  # a counter this GPU or driver does not expose
                pass
        return sample


class ProcessReader:
    """This process's CPU share, the share of time its threads waited for a core (the kernel's run-queue time:
    a process starved of CPU by other jobs or too many threads), both as 100% = one core, and its resident
    memory, from os.times and /proc."""

    def __init__(self):
        self.last = (time.monotonic(), _cpu_seconds(), _waiting_seconds())

    def read(self):
        now, cpu, waiting = time.monotonic(), _cpu_seconds(), _waiting_seconds()
        (t0, c0, w0), self.last = self.last, (now, cpu, waiting)
        span = max(now - t0, 1e-9)
        sample = {"cpu_percent": 100 * (cpu - c0) / span, "rss_mib": _rss_mib()}
        if waiting is not None and w0 is not None:
            sample["waiting_percent"] = max(0.0, 100 * (waiting - w0) / span)  # a thread that ended takes its share
        return sample


def _cpu_seconds():
    t = os.times()
    return t.user + t.system


def _waiting_seconds():
    """Seconds this process's threads have spent runnable but waiting for a core, or None without schedstat."""
    total = 0
    try:
        for task in Path("/proc/self/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):  # a thread that ended while it was read
                continue
    except OSError:
        return None
    return total / 1e9


def _rss_mib():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return None


class Sampler:
    """`with Sampler(sink, interval_ms, devices=device):` samples the training GPU(s) in a daemon thread until the
    block ends; with no GPU to sample (a CPU run, no NVML), this process's CPU use and memory."""

    def __init__(
        self,
        sink,
        interval_ms=100,
        nvml=None,
        log=print,
        devices=None,
        cuda_id=torch_cuda_id,
        pcie_period_s=PCIE_PERIOD_S,
    ):
        """`devices`: the training device(s) as CUDA indices or torch devices (see cuda_indices); None: the current
        CUDA device. `nvml`: the NVML module (default: pynvml, initialised). `cuda_id(index)`: a CUDA device's
        CudaId (default: from torch; tests pass a stand-in)."""
        self.sink, self.interval, self.log = sink, interval_ms / 1000, log
        self.devices, self.nvml, reason = [], None, None
        indices = cuda_indices(devices)
        if not indices:
            reason = "no CUDA device to sample (training on the CPU)"
        else:
            if nvml is None:
                nvml, reason = _nvml()
            if nvml is not None:
                self.devices, notes = match(nvml, indices, cuda_id)
                for note in notes:
                    log(f"GPU sampler: {note}")
                if not self.devices:
                    reason = "no training GPU matched an NVML device"
        if self.devices:
            self.nvml, self.kind = nvml, "gpu"
            self.readers = [GpuReader(nvml, d.nvml.handle, pcie_period_s) for d in self.devices]
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
        failed = False
        while not self.stop_event.is_set():
            now = time.monotonic()
            t = round(now - self.start, 3)
            try:
                for record in self.sample(now):
                    self.sink.write({"t": t, "clock": round(now, 3), **record})
            except Exception as err:  # a GPU lost mid-run, or counters this one refuses: keep the trainer going
                if not failed:
                    self.log(f"GPU sampler: a sample failed ({type(err).__name__}: {err}); trying again each interval")
                failed = True
            self.stop_event.wait(self.interval)

    def sample(self, now=None):
        """One record per sampled device (or one for the process); `now` (time.monotonic) paces PCIe reads."""
        now = time.monotonic() if now is None else now
        if self.kind == "gpu":
            return [
                {"gpu": d.cuda, "nvml_index": d.nvml.index, **reader.read(now)}
                for d, reader in zip(self.devices, self.readers, strict=True)
            ]
        return [{"process": os.getpid(), **self.process.read()}]
