"""The job kinds beyond generate, end to end on a real local Ray: encode (latent precompute) and redecode."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from jobs.local import run_job
from jobs.spec import parse_spec
from pipelines.sinks.layout import OutputLayout
from pipelines.verify import verify_output
from tests.conftest import REPO
from tests.support.jobspecs import encode_spec_dict, spec_dict

SIZE = 64


def parse(data: dict, overrides=()):
    return parse_spec(yaml.safe_dump(data), source="test.yaml", overrides=list(overrides))


def write_photos(folder, count=12) -> None:
    """Smooth colour images of several sizes and aspect ratios (so encode must resize and crop)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for i in range(count):
        h, w = [(64, 64), (96, 80), (50, 120)][i % 3]
        y, x = np.mgrid[0:h, 0:w]
        base = rng.uniform(0, 255, 3)
        pixels = np.stack([(base[c] + 80 * np.sin(x / (5 + i) + c) + 60 * np.cos(y / 7)) % 256 for c in range(3)], -1)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"photo-{i:02d}.png")


@pytest.fixture(scope="module")
def generated(ray_cluster, tmp_path_factory):
    """A generate output that kept its latents: the input of encode and redecode."""
    out = tmp_path_factory.mktemp("generated") / "out"
    spec = parse(spec_dict(out, num_images=16, output__save_latents=True))
    run_job(spec, progress=False)
    return spec, out


@pytest.fixture(scope="module")
def encoded(generated, tmp_path_factory):
    _, gen_out = generated
    out = tmp_path_factory.mktemp("encoded") / "out"
    spec = parse(encode_spec_dict(gen_out, out))
    report = run_job(spec, progress=False)
    return spec, out, report


def read_samples(url) -> dict[str, dict]:
    import webdataset as wds

    layout = OutputLayout(str(url))
    return {s["__key__"]: s for s in wds.WebDataset(layout.tar_urls(), shardshuffle=False)}


def test_encode_a_generate_output_keeps_keys_and_writes_latents_webdataset_reads(generated, encoded):
    _, gen_out = generated
    spec, out, report = encoded
    result = verify_output(str(out))
    assert result["ok"], result["problems"]
    assert (result["samples"], result["missing"], result["duplicates"]) == (16, 0, 0)
    samples = read_samples(out)
    assert sorted(samples) == sorted(read_samples(gen_out))  # the input's keys, kept
    for sample in samples.values():
        latents = np.load(io.BytesIO(sample["latent.npy"]))
        assert latents.shape == (4, SIZE // 8, SIZE // 8) and latents.dtype == np.float32
        meta = json.loads(sample["json"])
        assert meta["latent_scaling_factor"] == pytest.approx(0.13025) and meta["latent_shape"] == [4, 8, 8]
        assert Image.open(io.BytesIO(sample["png"])).size == (SIZE, SIZE)
        assert sample["txt"].decode() == meta["prompt"] != ""
    # Only the kind's own stages ran.
    assert set(report["stages"]) == {"read", "encode", "write"}


def test_encoded_latents_decode_in_plain_diffusers_like_inside_latentmill(encoded):
    from diffusers import AutoencoderKL

    from pipelines.models.loading import resolve_reference
    from pipelines.stages.decode import Decode

    _, out, _ = encoded
    samples = read_samples(out)
    keys = sorted(samples)[:4]
    latents = np.stack([np.load(io.BytesIO(samples[k]["latent.npy"])) for k in keys])
    vae = AutoencoderKL.from_pretrained(resolve_reference("tiny"), subfolder="vae")
    with torch.no_grad():
        plain = vae.decode(torch.from_numpy(latents) / vae.config.scaling_factor).sample
    plain = ((plain / 2 + 0.5).clamp(0, 1) * 255).round().permute(0, 2, 3, 1).numpy()
    decoded = Decode("sdxl-vae", "tiny", "png")({"keys": keys, "latents": latents})
    ours = np.stack([np.asarray(Image.open(io.BytesIO(f["png"]))) for f in decoded["files"]]).astype(np.float64)
    assert np.abs(plain - ours).mean() <= 2.0


def test_redecode_writes_the_same_keys_with_the_new_decoder_and_no_denoise(generated, tmp_path):
    gen_spec, gen_out = generated
    out = tmp_path / "redecoded"
    data = {"name": "test-redecode", "kind": "redecode", "input": {"url": str(gen_out)}, "decoder": "random:taesd",
            "output": {"url": str(out), "samples_per_shard": 8},
            "stages": {"read": {"num_cpus": 0.25, "batch_size": 4},
                       "decode": {"num_gpus": 0, "num_cpus": 0.5, "batch_size": 4}}}
    report = run_job(parse(data), progress=False)
    assert set(report["stages"]) == {"read", "decode", "write"}
    assert verify_output(str(out))["ok"]
    before, after = read_samples(gen_out), read_samples(out)
    assert sorted(after) == sorted(before)
    for key in before:
        assert after[key]["txt"] == before[key]["txt"]
        assert json.loads(after[key]["json"])["decoder"] == "random:taesd"
        assert after[key]["png"] != before[key]["png"]  # another decoder, other pixels


def test_bad_images_in_a_folder_are_rejected_inputs_not_failures(ray_cluster, tmp_path):
    photos = tmp_path / "photos"
    write_photos(photos, count=5)
    (photos / "empty.png").write_bytes(b"")
    good = (photos / "photo-00.png").read_bytes()
    buffer = io.BytesIO()
    Image.open(photos / "photo-01.png").convert("RGB").save(buffer, format="JPEG")
    (photos / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (photos / "notes.png").write_text("this is text, not a picture")
    assert good
    out = tmp_path / "out"
    spec_path = tmp_path / "encode.yaml"
    spec_path.write_text(yaml.safe_dump(encode_spec_dict(photos, out)))
    report = run_job(parse_spec(spec_path.read_text()), progress=False)
    assert report["failed"] == 0
    result = verify_output(str(out))
    assert result["ok"] and result["samples"] == 5 and result["rejected"] == 3, result
    manifest = [row for path in sorted((out / "shards").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    reasons = {json.loads(r["metadata"])["path"]: r["error"] for r in manifest if r["status"] == "rejected"}
    assert set(reasons) == {"empty.png", "truncated.jpg", "notes.png"}
    assert "empty file" in reasons["empty.png"] and "not a readable image" in reasons["notes.png"]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, capture_output=True, text=True)

    assert cli("verify", str(out)).returncode == 0
    strict = cli("verify", str(out), "--strict")
    assert strict.returncode == 1 and "3 rejected" in strict.stdout
    again = cli("run", str(spec_path), "--retry-failed", "--quiet")
    assert again.returncode == 0, again.stderr
    assert verify_output(str(out))["rejected"] == 3
