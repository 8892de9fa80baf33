"""GPU telemetry: NVML samples per actor (a fake NVML here, allowed by the issue), their summary in
the report per stage, Ray metrics, and "no GPU" where NVML has no device."""

from __future__ import annotations

from pipelines.observe.gpu_telemetry import GpuSampler, open_nvml, stage_gpu_figures, start_sampler


class GaugeRecorder:
    """Where a sampler's readings go instead of Ray's gauges (same `set` call)."""

    def __init__(self):
        self.calls = []

    def set(self, *args):
        self.calls.append(args)


def test_sampler_means_peaks_and_busy_share_from_nvml():
    nvml = open_nvml("tests.support.fake_nvml")
    gauges = GaugeRecorder()
    sampler = GpuSampler(nvml, ["1"], "denoise", every_s=3600, gauges=gauges)
    sampler.sample()  # SM 20 %, 1 GiB, 100 W (idle)
    sampler.busy = True
    sampler.sample()  # SM 40 %, 2 GiB, 150 W
    sampler.sample()  # SM 60 %, 3 GiB, 200 W
    assert sampler.summary() == {
        "gpus": ["1"], "names": ["Fake GPU"], "samples": 3, "sm_util_pct": 40.0, "sm_util_busy_pct": 50.0,
        "memory_used_mb": 2048, "memory_peak_mb": 3072, "power_w": 150.0, "power_peak_w": 200.0,
    }
    assert gauges.calls[-1] == ("denoise", "1", 60.0, 3 * (1 << 30), 200.0)


def test_two_gpus_sum_memory_and_power_and_average_utilisation():
    sampler = GpuSampler(open_nvml("tests.support.fake_nvml"), ["0", "1"], "decode", every_s=3600)
    sampler.sample()
    s = sampler.summary()
    assert (s["sm_util_pct"], s["memory_used_mb"], s["power_w"]) == (15.0, 2048, 200.0)


def test_sampler_thread_samples_until_stopped():
    sampler = GpuSampler(open_nvml("tests.support.fake_nvml"), ["0"], "decode", every_s=0.01).start()
    import time

    deadline = time.monotonic() + 10
    while sampler.summary()["samples"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    sampler.stop()
    assert sampler.summary()["samples"] >= 3


def test_no_nvml_or_no_gpu_means_no_sampler(monkeypatch):
    assert open_nvml("latentmill_no_such_nvml_module") is None
    monkeypatch.setenv("LATENTMILL_NVML_MODULE", "tests.support.fake_nvml")
    assert start_sampler("decode", [], export=False) is None  # a CPU actor
    assert start_sampler("decode", ["9"], export=False) is None  # NVML does not know the device
    assert start_sampler("decode", ["2"], export=False).summary()["gpus"] == ["2"]


def test_stage_figures_combine_actors_and_say_no_gpu():
    a = GpuSampler(open_nvml("tests.support.fake_nvml"), ["0"], "denoise", every_s=3600)
    b = GpuSampler(open_nvml("tests.support.fake_nvml"), ["1"], "denoise", every_s=3600)
    for _ in range(2):
        a.sample()
    b.sample()  # a: SM 10, 30 / b: SM 20 -> weighted mean 20
    actors = [{"stage": "denoise", "gpu": a.summary(), "compile_s": 12.5},
              {"stage": "denoise", "gpu": b.summary(), "compile_s": 14.0},
              {"stage": "decode", "gpu": None, "compile_s": None}]
    figures = stage_gpu_figures(actors)
    assert figures["decode"] == {"gpu": None, "compile_s": None}
    d = figures["denoise"]
    assert d["compile_s"] == 14.0 and d["gpu"]["gpus"] == ["0", "1"] and d["gpu"]["sm_util_pct"] == 20.0
    assert d["gpu"]["memory_peak_mb"] == 2048 and d["gpu"]["power_peak_w"] == 150.0


def test_samples_go_to_ray_metrics(ray_cluster):
    from pipelines.observe.gpu_telemetry import RayGpuGauges

    gauges = RayGpuGauges()
    sampler = GpuSampler(open_nvml("tests.support.fake_nvml"), ["0"], "decode", every_s=3600, gauges=gauges)
    sampler.sample()  # Ray's gauges take the reading (exported by Ray's metrics agent where one runs)
    assert gauges.sm.info["name"] == "latentmill_gpu_sm_utilisation_pct" and gauges.sm.info["tag_keys"] == ("stage", "gpu")
