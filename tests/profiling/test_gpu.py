import json
import time
import types

import pytest
import torch

from profiling.gpu import Sampler


class Sink:
    def __init__(self):
        self.records = []

    def write(self, record):
        self.records.append(json.loads(json.dumps(record)))


def fake_nvml(count=2):
    """The slice of NVML the sampler uses, with fixed readings per device."""

    def handle(i):
        return {"index": i}

    return types.SimpleNamespace(
        NVML_CLOCK_SM=1,
        NVML_TEMPERATURE_GPU=0,
        NVML_PCIE_UTIL_RX_BYTES=1,
        NVML_PCIE_UTIL_TX_BYTES=0,
        nvmlDeviceGetCount=lambda: count,
        nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=40 + h["index"], memory=10),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=3 * 2**30, total=80 * 2**30),
        nvmlDeviceGetPowerUsage=lambda h: 250_000,
        nvmlDeviceGetClockInfo=lambda h, kind: 1755,
        nvmlDeviceGetTemperature=lambda h, kind: 61,
        nvmlDeviceGetCurrentClocksThrottleReasons=lambda h: 4,
        nvmlDeviceGetPcieThroughput=lambda h, kind: 1000 + kind,
    )


def test_sampler_records_every_visible_gpu_from_nvml(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    sink = Sink()
    with Sampler(sink, interval_ms=10, nvml=fake_nvml()):
        time.sleep(0.1)
    assert len(sink.records) >= 3
    first = sink.records[0]
    assert first == {
        "t": first["t"],
        "gpu": 1,
        "util": 41,
        "mem_util": 10,
        "mem_used_mib": 3072.0,
        "power_w": 250.0,
        "sm_clock_mhz": 1755,
        "temp_c": 61,
        "throttle": 4,
        "pcie_rx_kbs": 1001,
        "pcie_tx_kbs": 1000,
    }
    times = [r["t"] for r in sink.records]
    assert times == sorted(times)


def test_without_nvml_it_records_the_process_and_says_so_once(monkeypatch):
    monkeypatch.setattr("profiling.gpu._nvml", lambda: (None, "NVML unavailable (test)"))
    sink, said = Sink(), []
    with Sampler(sink, interval_ms=10, log=said.append):
        sum(i * i for i in range(200_000))
        time.sleep(0.05)
    assert len(said) == 1 and "CPU use and memory instead" in said[0]
    assert sink.records and set(sink.records[-1]) == {"t", "process", "cpu_percent", "rss_mib"}
    assert sink.records[-1]["rss_mib"] > 10


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and NVML")
def test_real_nvml_reads_this_gpu():
    sink = Sink()
    with Sampler(sink, interval_ms=20) as sampler:
        torch.randn(4096, 4096, device="cuda").matmul(torch.randn(4096, 4096, device="cuda"))
        time.sleep(0.1)
    assert sampler.kind == "gpu"
    record = sink.records[-1]
    assert 0 <= record["util"] <= 100 and record["mem_used_mib"] > 0
