"""The decode stage takes its decoder from the registry: a name, a checkpoint path, tiled decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import decoders
from jobs.local import run_job
from jobs.spec import parse_spec
from pipelines.errors import ConfigError
from pipelines.readers import webdataset
from pipelines.verify import verify_output
from tests.support.jobspecs import spec_dict


def run(out, **changes) -> dict[str, dict]:
    """Run 8 samples with their latents kept; returns key -> {"png": pixels, "latents": array}."""
    spec = parse_spec(yaml.safe_dump(spec_dict(out, num_images=8, output__save_latents=True, **changes)))
    run_job(spec, progress=False)
    assert verify_output(str(out))["ok"]
    return {s["__key__"]: {"png": np.asarray(Image.open(io.BytesIO(s["png"]))),
                           "latents": np.load(io.BytesIO(s["latent.npy"]))} for s in webdataset(str(out))}


def decode_here(decoder, latents: np.ndarray) -> np.ndarray:
    pixels = decoder.decode(torch.from_numpy(latents)[None])
    return (pixels * 255).round().clamp(0, 255).byte()[0].permute(1, 2, 0).numpy()


def test_decoder_checkpoint_path(ray_cluster, tmp_path):
    checkpoint = tmp_path / "my-taesd.safetensors"
    decoders.build("taesd", tiny=True, seed=3).save_file(checkpoint)
    samples = run(tmp_path / "ckpt", decoder=str(checkpoint))
    # The job's images are what the checkpoint decodes from the same latents: decode them here too.
    dec = decoders.load(str(checkpoint), device="cpu")
    assert len(samples) == 8
    for sample in samples.values():
        assert np.abs(decode_here(dec, sample["latents"]).astype(int) - sample["png"].astype(int)).max() <= 1


def test_random_build_decodes_in_tiles_close_to_untiled(ray_cluster, tmp_path):
    # A random build of TAESD at 256x256 in 128-pixel tiles: tiles several times its receptive field,
    # as tiling is meant to be used. (The tiny SDXL VAE at 128 in 64-pixel tiles differs by up to 101
    # levels: its tiles are smaller than what each pixel sees, so no blending can hide the seams.)
    # The reference is the same random build, untiled, on the job's own latents.
    samples = run(tmp_path / "tiled", sampler__height=256, sampler__width=256, decoder="random:taesd",
                  decoder_tiling=128)
    untiled = decoders.load("random:taesd", device="cpu")
    assert len(samples) == 8 and all(s["png"].shape == (256, 256, 3) for s in samples.values())
    diff = np.stack([np.abs(decode_here(untiled, s["latents"]).astype(int) - s["png"].astype(int))
                     for s in samples.values()])
    # Really tiled: untiled, the job and this process differ by rounding alone (at most 1 level, as
    # in the checkpoint test above); blended seams move pixels by more (7 levels measured).
    assert diff.max() > 1
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 8 and diff.max() <= 32, (diff.mean(), diff.max())


def test_tiling_size_must_fit_the_latent_factor(tmp_path):
    with pytest.raises(ConfigError, match="decoder_tiling: expected true, false or a tile size"):
        parse_spec(yaml.safe_dump(spec_dict(tmp_path / "x", decoder_tiling=100)))
