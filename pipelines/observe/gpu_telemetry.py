"""GPU telemetry of one actor: NVML samples of its devices (SM utilisation, memory, power).

Each GPU actor runs one `GpuSampler` on a background thread for its Ray-assigned GPUs. Its summary
travels with the actor's info into the run report, where the report shows it per stage next to
busy time, and each sample is exported as Ray metrics (gauges tagged with stage and GPU). Memory
and power are the device's: actors sharing a GPU (fractional num_gpus) see the same figures.
SM utilisation is NVML's: the share of time a kernel ran, sampled; `busy` splits it by whether
the actor was running a batch.

Without NVIDIA GPUs (or NVML) there is no sampler and the report says "no GPU". NVML comes from
`nvidia-ml-py` (module `pynvml`); LATENTMILL_NVML_MODULE names another module with its API (tests
use a fake one on machines without GPUs).
"""

from __future__ import annotations

import importlib
import os
import threading

SAMPLE_EVERY_S = 0.5
MB = 1 << 20


def open_nvml(module_name: str | None = None):
    """The NVML module, initialised; None where there is none (no driver, no library, no GPU)."""
    name = module_name or os.environ.get("LATENTMILL_NVML_MODULE", "pynvml")
    try:
        nvml = importlib.import_module(name)
        nvml.nvmlInit()
        return nvml
    except Exception:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded...
        return None


def device_handles(nvml, gpu_ids: list[str]) -> list:
    """Ray's GPU ids are the machine's indices (or UUIDs), which NVML takes as they are."""
    return [nvml.nvmlDeviceGetHandleByIndex(int(g)) if str(g).isdigit() else nvml.nvmlDeviceGetHandleByUUID(str(g))
            for g in gpu_ids]


class _Series:
    """Count, sum and max of a sampled value (what the summary needs, in constant memory)."""

    def __init__(self):
        self.n, self.total, self.max = 0, 0.0, None

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.max = value if self.max is None else max(self.max, value)

    def mean(self) -> float | None:
        return self.total / self.n if self.n else None


class GpuSampler:
    """Samples NVML for `gpu_ids` every `every_s` seconds on a daemon thread until `stop()`."""

    def __init__(self, nvml, gpu_ids: list[str], stage: str, every_s: float = SAMPLE_EVERY_S, gauges=None):
        self.nvml, self.gpu_ids, self.stage, self.every_s = nvml, [str(g) for g in gpu_ids], stage, every_s
        self.handles = device_handles(nvml, self.gpu_ids)
        self.names = [_text(nvml.nvmlDeviceGetName(h)) for h in self.handles]
        self.gauges = gauges
        self.busy = False  # set by the actor around each batch
        self.sm, self.sm_busy, self.memory, self.power = _Series(), _Series(), _Series(), _Series()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"gpu-telemetry-{stage}", daemon=True)

    def start(self) -> "GpuSampler":
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.sample()
            except Exception:  # a transient NVML error must not end the actor; the next sample may work
                continue

    def sample(self) -> None:
        """One reading of every device: SM % averaged, memory and power summed over them."""
        nvml = self.nvml
        sm = [nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self.handles]
        used = sum(nvml.nvmlDeviceGetMemoryInfo(h).used for h in self.handles)
        watts = sum(nvml.nvmlDeviceGetPowerUsage(h) for h in self.handles) / 1000.0  # NVML reports mW
        mean_sm = sum(sm) / len(sm)
        self.sm.add(mean_sm)
        if self.busy:
            self.sm_busy.add(mean_sm)
        self.memory.add(used / MB)
        self.power.add(watts)
        if self.gauges is not None:
            self.gauges.set(self.stage, ",".join(self.gpu_ids), mean_sm, used, watts)

    def summary(self) -> dict:
        """JSON-able figures for the run report (see `stage_gpu_figures`)."""
        r = lambda v, d=1: None if v is None else round(v, d)  # noqa: E731
        return {
            "gpus": self.gpu_ids,
            "names": self.names,
            "samples": self.sm.n,
            "sm_util_pct": r(self.sm.mean()),
            "sm_util_busy_pct": r(self.sm_busy.mean()),
            "memory_used_mb": r(self.memory.mean(), 0),
            "memory_peak_mb": r(self.memory.max, 0),
            "power_w": r(self.power.mean()),
            "power_peak_w": r(self.power.max),
        }


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RayGpuGauges:
    """Ray metrics gauges for GPU samples (exported with Ray's other metrics, prefixed `ray_`)."""

    def __init__(self):
        # lazy: keeps ray out of processes that never call this
        from ray.util.metrics import Gauge

        tags = ("stage", "gpu")
        self.sm = Gauge("latentmill_gpu_sm_utilisation_pct", "NVML SM utilisation of an actor's GPUs", tag_keys=tags)
        self.memory = Gauge("latentmill_gpu_memory_used_bytes", "device memory used on an actor's GPUs", tag_keys=tags)
        self.power = Gauge("latentmill_gpu_power_watts", "power drawn by an actor's GPUs", tag_keys=tags)

    def set(self, stage: str, gpu: str, sm: float, memory: float, watts: float) -> None:
        tags = {"stage": stage, "gpu": gpu}
        self.sm.set(sm, tags=tags)
        self.memory.set(memory, tags=tags)
        self.power.set(watts, tags=tags)


def start_sampler(stage: str, gpu_ids: list[str], export: bool = True) -> GpuSampler | None:
    """A running sampler for an actor's GPUs; None for a CPU actor or where NVML is missing.
    `export`: also set Ray metrics gauges (inside a Ray worker)."""
    if not gpu_ids:
        return None
    nvml = open_nvml()
    if nvml is None:
        return None
    try:
        gauges = RayGpuGauges() if export else None
    except Exception:  # no Ray metrics here: the report still gets the figures
        gauges = None
    try:
        return GpuSampler(nvml, gpu_ids, stage, gauges=gauges).start()
    except Exception:  # e.g. logical GPUs (tests) that NVML does not know: no telemetry, the job goes on
        return None


def stage_gpu_figures(actors: list[dict]) -> dict:
    """Per stage, from the actors' infos: their GPU figures, or None for "no GPU" (no actor had one
    NVML could read). Means weighted by samples; peaks are maxima."""
    by_stage: dict[str, list[dict]] = {}
    for info in actors:
        by_stage.setdefault(info.get("stage", "?"), []).append(info)
    out = {}
    for stage, infos in by_stage.items():
        gpus = [i["gpu"] for i in infos if i.get("gpu")]
        compile_s = [i["compile_s"] for i in infos if i.get("compile_s") is not None]
        out[stage] = {"gpu": _combine(gpus) if gpus else None,
                      "compile_s": round(max(compile_s), 3) if compile_s else None}
    return out


def _combine(gpus: list[dict]) -> dict:
    n = sum(g["samples"] for g in gpus) or 1

    def mean(key):
        values = [(g[key], g["samples"]) for g in gpus if g.get(key) is not None]
        return round(sum(v * w for v, w in values) / max(1, sum(w for _, w in values)), 1) if values else None

    def peak(key):
        values = [g[key] for g in gpus if g.get(key) is not None]
        return max(values) if values else None

    return {"gpus": sorted({x for g in gpus for x in g["gpus"]}), "names": sorted({x for g in gpus for x in g["names"]}),
            "samples": n, "sm_util_pct": mean("sm_util_pct"), "sm_util_busy_pct": mean("sm_util_busy_pct"),
            "memory_used_mb": mean("memory_used_mb"), "memory_peak_mb": peak("memory_peak_mb"),
            "power_w": mean("power_w"), "power_peak_w": peak("power_peak_w")}
