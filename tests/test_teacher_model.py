"""A teacher (a bare diffusers AutoencoderKL directory, what `kind: train-vae` writes) named wherever
a model or decoder is: `model.reference` of encode (its encoder, its scaling), `decoder:` of redecode,
`latentmill eval --decoder` and the reference eval finds in the encode output's record, and
train-decoder's `target: reference` (the teacher's decode). The teacher here is a tiny AutoencoderKL
of the SDXL block types with random weights and a non-trivial scaling and shift, saved by the test
with save_pretrained and loaded by the real from-disk code paths."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from diffusers import AutoencoderKL
from PIL import Image

import decoders
from decoders.flops import count_flops, meta_twin
from jobs.checks import check_model
from jobs.cli import main as cli_main
from jobs.dry_run import dry_run
from jobs.local import run_job
from jobs.spec import parse_spec
from jobs.train.driver import check_before_training
from jobs.train.sample_photos import write_crops
from pipelines.errors import ConfigError
from pipelines.models.loading import is_vae_dir, load_model_vae
from pipelines.readers import webdataset
from tests.support.jobspecs import encode_spec_dict

REPO = __file__.rsplit("/tests/", 1)[0]
SCALE, SHIFT = 0.7, 0.05  # not SDXL's: a path that ignored the teacher's own config would show


def save_teacher(path) -> str:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        vae = AutoencoderKL(
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[8, 16, 16, 16], layers_per_block=1, latent_channels=4, norm_num_groups=8,
            sample_size=64, scaling_factor=SCALE, shift_factor=SHIFT)
    vae.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    return save_teacher(tmp_path_factory.mktemp("teacher") / "vae")


def plain_diffusers(teacher: str, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents as pipelines use them, decoded pixels in [0, 1]) by diffusers alone, as its docs do it."""
    vae = AutoencoderKL.from_pretrained(teacher).eval()
    with torch.no_grad():
        mode = vae.encode(pixels * 2 - 1).latent_dist.mode()
        decoded = vae.decode(mode).sample
    return (mode - SHIFT) * SCALE, (decoded / 2 + 0.5).clamp(0, 1)


def test_a_teacher_directory_is_the_model_vae_with_its_own_scaling_and_shift(teacher):
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    latents, decoded = plain_diffusers(teacher, pixels)
    assert is_vae_dir(teacher) and not is_vae_dir(REPO)
    model_vae = load_model_vae(teacher, "cpu", "float32")  # what `model.reference: DIR` loads
    torch.testing.assert_close(model_vae.encode(pixels), latents, rtol=1e-5, atol=1e-5)
    for decoder in (model_vae, decoders.load(teacher, device="cpu")):  # and what `decoder: DIR` / --decoder load
        torch.testing.assert_close(decoder.decode(latents), decoded, rtol=1e-5, atol=1e-5)
    assert decoders.load(teacher).num_parameters() == sum(
        p.numel() for m in (model_vae.model.decoder, model_vae.model.post_quant_conv) for p in m.parameters())


def test_a_teacher_serves_jobs_that_use_only_a_vae_and_is_refused_where_a_pipeline_is_needed(teacher, tmp_path):
    check_model(teacher, "sdxl", vae_only=True)
    with pytest.raises(ConfigError, match="bare AutoencoderKL directory .* needs a whole pipeline"):
        check_model(teacher, "sdxl")
    other = tmp_path / "unet"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ConfigError, match="neither a diffusers pipeline directory .* names 'UNet2DModel'"):
        check_model(str(other), "sdxl", vae_only=True)
    spec = tmp_path / "encode.yaml"
    spec.write_text(yaml.safe_dump(encode_spec_dict(tmp_path, tmp_path / "out") | {"model": {"reference": str(other)}}))
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "run", str(spec), "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "model.reference" in done.stderr, done.stderr


@pytest.fixture(scope="module")
def taught(ray_cluster, teacher, tmp_path_factory):
    """Crops encoded by the teacher (`model.reference: TEACHER`)."""
    root = tmp_path_factory.mktemp("taught")
    write_crops(str(root / "photos"), ["astronaut", "coffee"], count=12, size=64)
    spec = encode_spec_dict(root / "photos", root / "encoded") | {"model": {"reference": teacher}}
    run_job(parse_spec(yaml.safe_dump(spec)), progress=False)
    return root


def stored(url) -> dict[str, dict]:
    return {s["__key__"]: s for s in webdataset(str(url))}


def test_encode_with_a_teacher_stores_its_latents_and_redecode_decodes_them_with_it(taught, teacher):
    samples = stored(taught / "encoded")
    assert len(samples) == 12
    keys = sorted(samples)
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(io.BytesIO(samples[k]["png"])).convert("RGB")))
                          for k in keys]).permute(0, 3, 1, 2).float() / 255
    latents = torch.stack([torch.from_numpy(np.load(io.BytesIO(samples[k]["latent.npy"]))) for k in keys])
    expected, decoded = plain_diffusers(teacher, pixels)
    torch.testing.assert_close(latents, expected, rtol=1e-4, atol=1e-4)
    redecode = {"name": "teacher-redecode", "kind": "redecode", "input": {"url": str(taught / "encoded")},
                "decoder": teacher, "output": {"url": str(taught / "redecoded"), "samples_per_shard": 8},
                "stages": {"read": {"num_cpus": 0.25, "batch_size": 4},
                           "decode": {"num_gpus": 0, "num_cpus": 0.5, "batch_size": 4}}}
    run_job(parse_spec(yaml.safe_dump(redecode)), progress=False)
    again = stored(taught / "redecoded")
    assert sorted(again) == keys
    ours = np.stack([np.asarray(Image.open(io.BytesIO(again[k]["png"])).convert("RGB")) for k in keys]).astype(float)
    plain = (decoded.permute(0, 2, 3, 1).numpy() * 255).round()
    assert np.abs(ours - plain).max() <= 1.0  # the teacher's decode, rounded to uint8 once


def test_eval_takes_the_teacher_from_the_encode_record_as_its_reference_and_as_a_decoder(taught, teacher):
    out = taught / "eval"
    assert cli_main(["eval", str(taught / "encoded"), "--decoder", teacher, "--baseline", "mean-colour",
                     "--out", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["reference"] == {"name": f"teacher {teacher}", "model": teacher, "teacher": True}
    reference, again, mean = result["rows"]
    assert reference["is_reference"] and again["decoder"] == teacher and mean["decoder"] == "mean colour (eval set)"
    assert math.isinf(float(again["psnr_vs_reference"])) and again["psnr_vs_original"] == reference["psnr_vs_original"]
    twin_flops = count_flops(meta_twin(decoders.load(teacher)), 1024, 1024)
    assert reference["flops_at_1024"] == again["flops_at_1024"] == twin_flops > 0 and mean["flops_at_1024"] == 0
    markdown = (out / "eval.md").read_text()
    assert "| PSNR vs teacher |" in markdown and f"Reference (teacher): teacher {teacher}" in markdown
    assert "| GFLOP at 1024 px |" in markdown


def train_dict(data_url, output_url, **changes) -> dict:
    return {"name": "teacher-distil", "kind": "train-decoder", "target": "reference",
            "data": {"urls": [str(data_url)], "held_out_fraction": 0.25}, "architecture": "lean", "tiny": True,
            "optim": {"steps": 2, "batch_size": 2, "warmup_steps": 1},
            "loss": {"pixel": "mse"},  # mse saves its target for backward: an inference-mode target fails there
            "scaling": {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 0.5},
            "checkpoints": {"every_steps": 2}, "eval_samples": 2, "progress_every_s": 0,
            "output": {"url": str(output_url)}, **changes}


def test_target_reference_distils_the_teachers_decode_named_by_the_data(taught, teacher, tmp_path):
    spec = parse_spec(yaml.safe_dump(train_dict(taught / "encoded", tmp_path / "out")), source="train.yaml")
    assert check_before_training(spec)["reference_model"] == teacher
    assert f"target reference; model sdxl {teacher}" in dry_run(spec).splitlines()[1]
    mismatched = train_dict(taught / "encoded", tmp_path / "x", model={"reference": "some-org/another-vae"})
    with pytest.raises(ConfigError, match="the data was encoded by"):
        check_before_training(parse_spec(yaml.safe_dump(mismatched), source="train.yaml"))
    report = run_job(spec, progress=False)
    assert report["target"] == "reference" and report["reference_model"] == teacher
    # Two trained lean decoders both call themselves trained:lean: eval names their rows by path.
    first, second = str(tmp_path / "out" / "decoder"), str(tmp_path / "copy")
    shutil.copytree(first, second)
    assert decoders.load(first).name == decoders.load(second).name == "trained:lean"
    assert cli_main(["eval", str(taught / "encoded"), "--decoder", first, "--decoder", second,
                     "--out", str(tmp_path / "eval")]) == 0
    rows = json.loads((tmp_path / "eval" / "eval.json").read_text())["rows"]
    assert [r["decoder"] for r in rows] == [f"teacher {teacher}", first, second]
    assert rows[1]["psnr_vs_original"] == rows[2]["psnr_vs_original"]
