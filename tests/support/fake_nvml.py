"""A fake NVML (the `pynvml` API that pipelines/observe/gpu_telemetry.py calls) for machines without GPUs.

The issue allows it: NVML needs an NVIDIA driver. Readings are fixed sequences per device, so the
telemetry's means and peaks can be checked exactly: device i reads SM 10*(i+1) + 20*k %, memory
(1 + k) GiB and power 100 + 50*k W at its k-th reading.
"""

from __future__ import annotations

from types import SimpleNamespace

GIB = 1 << 30
readings: dict[int, int] = {}


class NVMLError(Exception):
    pass


def nvmlInit():
    readings.clear()


def nvmlDeviceGetHandleByIndex(index: int):
    if index > 7:
        raise NVMLError(f"no device {index}")
    return index


def nvmlDeviceGetHandleByUUID(uuid: str):
    raise NVMLError(f"no device {uuid}")


def nvmlDeviceGetName(handle) -> bytes:
    return b"Fake GPU"


def _current(handle) -> int:
    """This device's reading number: utilisation (read first in a sample) advances it."""
    return readings.get(handle, 0)


def nvmlDeviceGetUtilizationRates(handle):
    k = readings[handle] = readings.get(handle, -1) + 1
    return SimpleNamespace(gpu=10 * (handle + 1) + 20 * k, memory=0)


def nvmlDeviceGetMemoryInfo(handle):
    return SimpleNamespace(used=(1 + _current(handle)) * GIB, total=80 * GIB, free=0)


def nvmlDeviceGetPowerUsage(handle) -> int:
    return (100 + 50 * _current(handle)) * 1000  # mW
