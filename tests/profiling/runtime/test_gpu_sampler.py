import collections
import json
import time
import types

import pytest
import torch

from profiling.runtime.gpu_sampler import CudaId, Sampler, bus_id_text, cuda_indices, torch_cuda_id


class Sink:
    def __init__(self):
        self.records = []

    def write(self, record):
        self.records.append(json.loads(json.dumps(record)))


# Four physical GPUs as NVML numbers them (by PCI bus id): (domain, bus, device). GPUs 0 and 3 sit on the same
# bus number in different PCI domains, so a match that ignores the domain picks the wrong one.
PCI = [(0, 0x1A, 0), (0, 0x3B, 0), (0, 0x5E, 0), (1, 0x1A, 0)]
# CUDA's own order of the same GPUs (fastest first, CUDA_DEVICE_ORDER unset): CUDA device k is NVML GPU CUDA_ORDER[k].
CUDA_ORDER = [2, 3, 0, 1]


def uuid(nvml_index):
    return f"GPU-0000000{nvml_index}-aaaa-bbbb-cccc-dddddddddddd"


class FakeNvml:
    """The slice of NVML the sampler uses, with fixed readings per device (util is 40 + NVML index), PCI info,
    UUIDs, and a count of every call by name."""

    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0
    NVML_PCIE_UTIL_RX_BYTES = 1
    NVML_PCIE_UTIL_TX_BYTES = 0

    def __init__(self, pci=PCI):
        self.pci, self.calls = pci, collections.Counter()

    def __getattribute__(self, name):
        if name.startswith("nvml"):
            object.__getattribute__(self, "calls")[name] += 1
        return object.__getattribute__(self, name)

    def nvmlDeviceGetCount(self):
        return len(self.pci)

    def nvmlDeviceGetHandleByIndex(self, i):
        return {"index": i}

    def nvmlDeviceGetPciInfo(self, h):
        domain, bus, device = self.pci[h["index"]]
        return types.SimpleNamespace(domain=domain, bus=bus, device=device, busId=bus_id_text(*self.pci[h["index"]]))

    def nvmlDeviceGetUUID(self, h):
        return uuid(h["index"])

    def nvmlDeviceGetHandleByPciBusId_v2(self, bus_id):
        return {"index": [bus_id_text(*p) for p in self.pci].index(bus_id)}  # ValueError: no such GPU

    def nvmlDeviceGetHandleByUUID(self, text):
        return {"index": [uuid(i) for i in range(len(self.pci))].index(text)}

    def nvmlDeviceGetIndex(self, h):
        return h["index"]

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=40 + h["index"], memory=10)

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=3 * 2**30, total=80 * 2**30)

    def nvmlDeviceGetPowerUsage(self, h):
        return 250_000

    def nvmlDeviceGetClockInfo(self, h, kind):
        return 1755

    def nvmlDeviceGetTemperature(self, h, kind):
        return 61

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):
        return 4

    def nvmlDeviceGetPcieThroughput(self, h, kind):
        return 1000 + kind


def fake_cuda(visible, order=CUDA_ORDER, by="pci"):
    """torch's view: CUDA_VISIBLE_DEVICES=`visible` (in CUDA's numbering) keeps those GPUs, renumbered from 0."""

    def cuda_id(index):
        if index >= len(visible):
            raise RuntimeError("invalid device ordinal")
        physical = order[visible[index]]
        return CudaId(pci=PCI[physical] if by == "pci" else None, uuid=uuid(physical)[4:] if by == "uuid" else None)

    return cuda_id


def test_each_training_gpu_is_matched_to_its_nvml_handle_by_pci_bus_id(monkeypatch):
    # CUDA_VISIBLE_DEVICES=1,2 hides CUDA's GPUs 0 and 3: cuda:0 is NVML GPU 3, cuda:1 is NVML GPU 0. Reading it
    # as NVML indices (the old guess) would sample NVML GPUs 1 and 2: both wrong.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    cuda_id, said = fake_cuda([1, 2]), []
    for device, nvml_index in (("cuda:0", 3), ("cuda:1", 0), (torch.device("cuda", 1), 0)):
        sampler = Sampler(Sink(), nvml=FakeNvml(), devices=device, cuda_id=cuda_id, log=said.append)
        assert [(d.nvml.index, d.matched_by) for d in sampler.devices] == [(nvml_index, "pci")]
        (record,) = sampler.sample(now=0.0)
        assert (record["gpu"], record["nvml_index"], record["util"]) == (
            cuda_indices(device)[0],
            nvml_index,
            40 + nvml_index,
        )
    nvml = FakeNvml()
    both = Sampler(Sink(), nvml=nvml, devices=[0, 1], cuda_id=cuda_id, log=said.append)
    assert [(r["gpu"], r["nvml_index"]) for r in both.sample(now=0.0)] == [(0, 3), (1, 0)]
    assert nvml.calls["nvmlDeviceGetHandleByPciBusId_v2"] == 2  # NVML's own lookup, not a scan of its table
    assert both.devices[0].nvml.bus_id == "00000001:1A:00.0"
    assert said == []  # nothing guessed, nothing left out


def test_uuid_is_the_fallback_and_position_the_last_resort_said_aloud(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    said = []
    nvml = FakeNvml()
    by_uuid = Sampler(Sink(), nvml=nvml, devices=[0], cuda_id=fake_cuda([1, 2], by="uuid"), log=said.append)
    assert [(d.nvml.index, d.matched_by) for d in by_uuid.devices] == [(3, "uuid")] and said == []
    assert nvml.calls["nvmlDeviceGetHandleByUUID"] == 1
    guessed = Sampler(Sink(), nvml=FakeNvml(), devices=[0], cuda_id=fake_cuda([1, 2], by=None), log=said.append)
    assert [(d.nvml.index, d.matched_by) for d in guessed.devices] == [(1, "position")]
    assert len(said) == 1 and "could not be matched" in said[0] and "CUDA_DEVICE_ORDER=PCI_BUS_ID" in said[0]


def test_a_device_nvml_cannot_match_is_left_out_and_none_at_all_falls_back_to_the_process():
    said = []
    sampler = Sampler(Sink(), nvml=FakeNvml(), devices=[0, 5], cuda_id=fake_cuda([0, 1]), log=said.append)
    assert [d.cuda for d in sampler.devices] == [0] and len(said) == 1 and "cuda:5" in said[0]
    said.clear()
    none = Sampler(Sink(), nvml=FakeNvml(), devices=[7], cuda_id=fake_cuda([0]), log=said.append)
    assert none.kind == "process" and "CPU use and memory instead" in said[-1]


def test_a_cpu_run_records_the_process_even_where_nvml_sees_gpus():
    said, nvml = [], FakeNvml()
    sampler = Sampler(Sink(), nvml=nvml, devices=torch.device("cpu"), log=said.append)
    assert sampler.kind == "process" and "training on the CPU" in said[0]
    assert not any(name.startswith("nvmlDeviceGetUtil") for name in nvml.calls)
    assert cuda_indices("cpu") == [] and cuda_indices([3, "cuda:1"]) == [3, 1] and cuda_indices(2) == [2]


def test_pcie_throughput_is_read_at_most_once_a_second_and_only_then_recorded():
    nvml = FakeNvml()
    sampler = Sampler(Sink(), nvml=nvml, devices=[0], cuda_id=fake_cuda([0]))
    samples = [sampler.sample(now=ms / 1000)[0] for ms in range(0, 2500, 50)]  # 50 samples over 2.5 s
    assert nvml.calls["nvmlDeviceGetUtilizationRates"] == 50
    assert nvml.calls["nvmlDeviceGetPcieThroughput"] == 6  # rx and tx at 0 s, 1 s and 2 s
    with_pcie = [i for i, s in enumerate(samples) if "pcie_rx_kbs" in s]
    assert with_pcie == [0, 20, 40]
    assert samples[20] == {
        "gpu": 0,
        "nvml_index": 2,
        "util": 42,
        "mem_util": 10,
        "mem_used_mib": 3072.0,
        "power_w": 250.0,
        "sm_clock_mhz": 1755,
        "temp_c": 61,
        "throttle": 4,
        "pcie_rx_kbs": 1001,
        "pcie_tx_kbs": 1000,
    }
    assert "pcie_tx_kbs" not in samples[21] and samples[21]["util"] == 42


def test_the_sampler_thread_samples_at_its_interval_and_pcie_once_a_second():
    """However the machine schedules the thread: one NVML read per sample, and PCIe (rx and tx) only in samples
    at least a second apart."""
    nvml, sink = FakeNvml(), Sink()
    with Sampler(sink, interval_ms=10, nvml=nvml, devices=[0], cuda_id=fake_cuda([0])):
        deadline = time.monotonic() + 60
        while len(sink.records) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(sink.records) >= 10 and nvml.calls["nvmlDeviceGetUtilizationRates"] == len(sink.records)
    with_pcie = [r["t"] for r in sink.records if "pcie_rx_kbs" in r]
    assert nvml.calls["nvmlDeviceGetPcieThroughput"] == 2 * len(with_pcie) and with_pcie[0] == sink.records[0]["t"]
    assert all(later - earlier >= 1.0 for earlier, later in zip(with_pcie, with_pcie[1:], strict=False))
    times = [r["t"] for r in sink.records]
    assert times == sorted(times) and {r["nvml_index"] for r in sink.records} == {2}


def test_without_nvml_it_records_the_process_and_says_so_once(monkeypatch):
    monkeypatch.setattr("profiling.runtime.gpu_sampler._nvml", lambda: (None, "NVML unavailable (test)"))
    sink, said = Sink(), []
    with Sampler(sink, interval_ms=10, log=said.append, devices=[0]):
        sum(i * i for i in range(200_000))
        deadline = time.monotonic() + 60
        while len(sink.records) < 2 and time.monotonic() < deadline:  # the second sample has a CPU share
            time.sleep(0.01)
    assert len(said) == 1 and "NVML unavailable (test)" in said[0] and "CPU use and memory instead" in said[0]
    assert sink.records and set(sink.records[-1]) == {
        "t",
        "clock",
        "process",
        "cpu_percent",
        "waiting_percent",
        "rss_mib",
    }
    assert sink.records[-1]["rss_mib"] > 10


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and NVML")
def test_real_nvml_samples_the_gpu_torch_calls_cuda_0():
    import pynvml

    sink = Sink()
    with Sampler(sink, interval_ms=20, devices="cuda:0") as sampler:
        torch.randn(4096, 4096, device="cuda").matmul(torch.randn(4096, 4096, device="cuda"))
        time.sleep(0.1)
    assert sampler.kind == "gpu"
    (sampled,) = sampler.devices
    props, want = torch.cuda.get_device_properties(0), torch_cuda_id(0)
    if hasattr(props, "pci_bus_id"):
        assert sampled.matched_by == "pci"
        assert sampled.nvml.bus_id == bus_id_text(props.pci_domain_id, props.pci_bus_id, props.pci_device_id)
    # NVML's own word on the sampled handle, independent of how it was matched: the same physical GPU as torch's.
    info = pynvml.nvmlDeviceGetPciInfo(sampled.nvml.handle)
    assert (info.domain, info.bus, info.device) == sampled.nvml.pci
    try:
        mig = pynvml.nvmlDeviceGetMigMode(sampled.nvml.handle)[0] == 1
    except pynvml.NVMLError:
        mig = False
    if want.uuid and not mig:  # under MIG, torch's UUID is the instance's, NVML's handle the whole GPU's
        assert want.uuid == sampled.nvml.uuid == str(pynvml.nvmlDeviceGetUUID(sampled.nvml.handle)).lower()[4:]
    record = sink.records[-1]
    assert record["gpu"] == 0 and record["nvml_index"] == pynvml.nvmlDeviceGetIndex(sampled.nvml.handle)
    assert 0 <= record["util"] <= 100 and record["mem_used_mib"] > 0
