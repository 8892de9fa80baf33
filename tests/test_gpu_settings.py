"""GPU settings as spec fields, run on CPU where CPU allows: channels_last, torch.compile (a tiny
decoder; compile time apart from throughput), and both stages sharing GPUs with fractional num_gpus
(the test cluster's logical GPUs)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import yaml

from jobs.local import run_job
from jobs.spec import parse_spec
from pipelines.config import ModelConfig, SamplerConfig
from pipelines.observe.gpu_telemetry import GpuSampler, open_nvml, stage_gpu_figures
from pipelines.observe.report import build_job_report, open_job_output, render_markdown
from pipelines.stages.decode import Decode
from pipelines.stages.denoise import Denoise
from pipelines.stages.gpu_settings import configure_backends
from tests.support.jobspecs import spec_dict


def _parse(spec: dict, overrides=()):
    return parse_spec(yaml.safe_dump(spec, sort_keys=False), source="job.yaml", overrides=list(overrides))


def test_gpu_fields_are_spec_fields_that_do_not_change_the_identity(tmp_path):
    plain = _parse(spec_dict(str(tmp_path / "o")))
    fast = _parse(spec_dict(str(tmp_path / "o")), ["model.channels_last=true", "model.compile=true"])
    assert fast.model.channels_last and fast.model.compile
    assert fast.identity() == plain.identity()  # how fast, not what: resumes either way
    assert fast.to_dict()["model"]["compile"] is True  # saved with the output


def test_channels_last_denoise_gives_the_same_latents():
    sampler = SamplerConfig(scheduler="euler", steps=2, height=64, width=64)
    batch = {"samples": [{"key": "k0", "prompt": "a red fox", "seed": 3}]}
    plain = Denoise(ModelConfig(), sampler, device="cpu")
    nhwc = Denoise(ModelConfig(channels_last=True), sampler, device="cpu")
    assert nhwc.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(nhwc(batch)["latents"], plain(batch)["latents"], atol=1e-4)
    assert configure_backends("cpu") == {} and plain.compile_s is None


def test_compiled_decoder_compiles_while_loading_and_decodes_the_same():
    kwargs = {"decoder": "random:taesd-tiny", "model_reference": "tiny", "image_format": "png", "batch_size": 2}
    plain = Decode(**kwargs, device="cpu")
    compiled = Decode(**kwargs, device="cpu", compile=True, channels_last=True, warmup_size=(64, 64))
    assert compiled.compile_s > 0 and plain.compile_s is None
    assert all(hasattr(m, "_compiled_call_impl") and m._compiled_call_impl is not None
               for m in compiled.decoder.decode_modules())
    latents = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    z = torch.tensor(latents)
    torch.testing.assert_close(compiled.decoder.decode(z), plain.decoder.decode(z), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def shared_gpus_run(ray_cluster, tmp_path_factory):
    """Denoise (0.75 GPU) and decode (0.25 GPU) actors, two of each, on the cluster's 2 logical GPUs."""
    out = tmp_path_factory.mktemp("fractional") / "out"
    spec = _parse(spec_dict(str(out), num_images=8), [
        "stages.denoise={num_gpus: 0.75, num_cpus: 0.5, concurrency: 2, batch_size: 2}",
        "stages.decode={num_gpus: 0.25, num_cpus: 0.25, concurrency: 2, batch_size: 2}",
        "stages.write={num_cpus: 0.25, concurrency: 1}", "model.channels_last=true",
    ])
    return out, run_job(spec, progress=False)


def test_fractional_gpus_put_a_denoise_and_a_decode_actor_on_each_gpu(shared_gpus_run):
    out, report = shared_gpus_run
    assert report["generated"] == 8
    actors = [a for a in report["actors"] if a["stage"] in ("denoise", "decode")]
    assert all(len(a["gpu_ids"]) == 1 and a["cuda_visible_devices"] == a["gpu_ids"][0] for a in actors)
    per_gpu = {gpu: Counter(a["stage"] for a in actors if a["gpu_ids"] == [gpu]) for gpu in ("0", "1")}
    assert per_gpu == {"0": Counter(denoise=1, decode=1), "1": Counter(denoise=1, decode=1)}
    assert report["stages"]["denoise"]["gpus_per_actor"] == 0.75 and report["stages"]["decode"]["gpus_per_actor"] == 0.25


def test_report_says_no_gpu_without_nvidia_gpus_and_shows_nvml_figures_per_stage(shared_gpus_run):
    out, _ = shared_gpus_run
    job = build_job_report(open_job_output(str(out)))
    # Logical GPUs: NVML (absent here, or without such devices) reads none of them.
    assert job["gpu"] == {"denoise": {"gpu": None, "compile_s": None}, "decode": {"gpu": None, "compile_s": None}}
    assert "GPU telemetry: **no GPU**" in render_markdown(job, chart=False)
    # The same report with what actors on NVIDIA GPUs record (fake NVML readings):
    sampler = GpuSampler(open_nvml("tests.support.fake_nvml"), ["0"], "denoise", every_s=3600)
    sampler.busy = True
    sampler.sample()
    job["gpu"] = stage_gpu_figures([{"stage": "denoise", "gpu": sampler.summary(), "compile_s": 41.0},
                                    {"stage": "decode", "gpu": None}])
    text = render_markdown(job, chart=False)
    busy = f"{job['stages']['denoise']['busy_s']:.1f}"
    assert f"| denoise | 0 (Fake GPU) | {busy} | 10.0 (10.0) | 1,024 / 1,024 | 100.0 / 100.0 |" in text
    assert "| decode | no GPU |" in text
    assert "torch.compile while loading (not in busy time): denoise 41.0 s." in text
