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
from tests.jobspecs import spec_dict


def run(out, **changes) -> dict[str, np.ndarray]:
    spec = parse_spec(yaml.safe_dump(spec_dict(out, num_images=8, **changes)))
    run_job(spec, progress=False)
    assert verify_output(str(out))["ok"]
    return {s["__key__"]: np.asarray(Image.open(io.BytesIO(s["png"]))) for s in webdataset(str(out))}


def test_random_build_of_a_lightweight_decoder(ray_cluster, tmp_path):
    images = run(tmp_path / "taesd", decoder="random:taesd")
    assert len(images) == 8 and all(i.shape == (64, 64, 3) for i in images.values())


def test_decoder_checkpoint_path(ray_cluster, tmp_path):
    checkpoint = tmp_path / "my-taesd.safetensors"
    decoders.build("taesd", tiny=True, seed=3).save_file(checkpoint)
    images = run(tmp_path / "ckpt", decoder=str(checkpoint))
    # The job's images are what the checkpoint decodes from the same latents: decode them here too.
    spec = parse_spec(yaml.safe_dump(spec_dict(tmp_path / "latents", num_images=8, decoder=str(checkpoint))),
                      overrides=["output.save_latents=true"])
    run_job(spec, progress=False)
    dec = decoders.load(str(checkpoint), device="cpu")
    for sample in webdataset(str(tmp_path / "latents")):
        latents = np.load(io.BytesIO(sample["latent.npy"]))
        pixels = (dec.decode(torch.from_numpy(latents)[None]) * 255).round().byte()[0].permute(1, 2, 0).numpy()
        assert np.abs(pixels.astype(int) - images[sample["__key__"]].astype(int)).max() <= 1


def test_tiled_decoding_matches_untiled_closely(ray_cluster, tmp_path):
    # TAESD at 256x256 in 128-pixel tiles: tiles several times its receptive field, as tiling is
    # meant to be used. (The tiny SDXL VAE at 128 in 64-pixel tiles differs by up to 101 levels:
    # its tiles are smaller than what each pixel sees, so no blending can hide the seams.)
    size = {"sampler__height": 256, "sampler__width": 256, "decoder": "random:taesd"}
    plain = run(tmp_path / "plain", **size)
    tiled = run(tmp_path / "tiled", decoder_tiling=128, **size)
    assert plain.keys() == tiled.keys()
    assert all(t.shape == (256, 256, 3) for t in tiled.values())
    diff = np.stack([np.abs(plain[k].astype(int) - tiled[k].astype(int)) for k in plain])
    assert diff.max() > 0  # really tiled: seams are blended
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 8 and diff.max() <= 32, (diff.mean(), diff.max())


def test_tiling_size_must_fit_the_latent_factor(tmp_path):
    with pytest.raises(ConfigError, match="decoder_tiling: expected true, false or a tile size"):
        parse_spec(yaml.safe_dump(spec_dict(tmp_path / "x", decoder_tiling=100)))
