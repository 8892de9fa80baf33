"""Registered names mean published weights, loaded through the real Hugging Face hub code offline.

The tests lay out a hub cache the way `hf download` leaves it (models--ORG--NAME/refs/main and
snapshots/SHA/...), holding tiny models of the right classes, and turn offline mode on; the hub
client then resolves the files from that cache exactly as it does for real weights.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

import decoders
from decoders.registry import PUBLISHED
from jobs.spec import parse_spec
from pipelines.errors import ConfigError
from tests.support.jobspecs import spec_dict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SNAPSHOT = "3f2a9c0d1b4e5f60718293a4b5c6d7e8f9012345"


def put_in_hub_cache(cache, name: str, seed: int = 0) -> decoders.Decoder:
    """A tiny model of `name`'s architecture, saved where the hub cache keeps `name`'s repository."""
    row = PUBLISHED[name]
    dec = decoders.build(row.architecture, tiny=True, seed=seed, device="cpu")
    repo_dir = cache / ("models--" + row.weights.repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / SNAPSHOT
    dec.model.save_pretrained(snapshot / (row.weights.subfolder or ""), safe_serialization=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(SNAPSHOT)
    return dec


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty hub cache in offline mode, as HF_HUB_CACHE / HF_HUB_OFFLINE=1 would set it."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_offline_without_cached_weights_says_what_is_needed_and_how_to_provide_it(offline_hub):
    with pytest.raises(decoders.WeightsUnavailable) as info:
        decoders.load("taesd")
    message = str(info.value)
    assert "madebyollin/taesd" in message
    assert "config.json diffusion_pytorch_model.safetensors" in message
    assert "hf download madebyollin/taesd" in message and "HF_HOME" in message
    assert str(offline_hub) in message and "offline mode is on" in message
    assert "give that directory as the decoder" in message and "'random:taesd'" in message


def test_svd_weights_name_their_subfolder(offline_hub):
    with pytest.raises(decoders.WeightsUnavailable, match=r"img2vid-xt: vae/config.json vae/diffusion_pytorch_model"):
        decoders.load("svd-vae")


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_registered_name_loads_its_weights_from_the_hub_cache(offline_hub, name, latents_for):
    saved = put_in_hub_cache(offline_hub, name, seed=3)
    dec = decoders.load(name, device="cpu")
    assert dec.name == name and dec.latent_space == PUBLISHED[name].latent_space
    assert type(dec.model) is type(saved.model) and dec.is_video == saved.is_video
    z = latents_for(dec)
    assert torch.equal(dec.decode(z), saved.decode(z))  # the cached weights, not a fresh random build
    assert not torch.equal(dec.decode(z), decoders.build(PUBLISHED[name].architecture, tiny=True).decode(z))


def test_random_weights_only_under_their_explicit_name(offline_hub):
    dec = decoders.load("random:taesd", device="cpu")
    assert dec.name == "random:taesd" and dec.latent_space is None
    assert decoders.load("random:tae-192-tiny", device="cpu").name == "random:tae-192-tiny"
    with pytest.raises(decoders.WeightsUnavailable):  # no silent fallback to random weights
        decoders.load("taesd")
    with pytest.raises(ValueError, match=r"'effvit' is an architecture without published weights.*'random:effvit'"):
        decoders.load("effvit")


def test_latent_space_mismatch_is_refused(offline_hub):
    decoders.check_latent_space("taesdxl", "sdxl")
    decoders.check_latent_space("random:taesd", "sdxl")  # random weights: nothing to check against
    with pytest.raises(decoders.LatentSpaceMismatch, match=r"'taesd' decodes Stable Diffusion 1.x/2.x.*taesdxl"):
        decoders.check_latent_space("taesd", "sdxl")
    put_in_hub_cache(offline_hub, "taesd")
    loaded = decoders.load("taesd", device="cpu")
    with pytest.raises(decoders.LatentSpaceMismatch):
        decoders.check_latent_space(loaded, "sdxl")
    by_id = decoders.load("madebyollin/taesd", device="cpu")  # the same weights by Hugging Face id
    assert by_id.latent_space == "sd"
    with pytest.raises(decoders.LatentSpaceMismatch, match="'madebyollin/taesd' decodes Stable Diffusion"):
        decoders.check_latent_space("madebyollin/taesd", "sdxl")
    with pytest.raises(ValueError, match="unknown model family"):
        decoders.check_latent_space("taesdxl", "flux")


def test_saved_decoders_keep_their_latent_space(offline_hub, tmp_path):
    put_in_hub_cache(offline_hub, "taesdxl", seed=1)
    dec = decoders.load("taesdxl", device="cpu")
    dec.save_pretrained(tmp_path / "dir")
    dec.save_file(tmp_path / "file.safetensors")
    for path in (tmp_path / "dir", tmp_path / "file.safetensors"):
        back = decoders.load(str(path), device="cpu")
        assert back.name == "taesdxl" and back.latent_space == "sdxl"
        with pytest.raises(decoders.LatentSpaceMismatch):
            decoders.check_latent_space(back, "sd")


def test_spec_refuses_a_decoder_for_other_latents_before_anything_runs(offline_hub, tmp_path):
    with pytest.raises(ConfigError, match=r"decoder: decoder 'taesd' decodes .* 'sdxl' model"):
        parse_spec(yaml.safe_dump(spec_dict(tmp_path / "o", decoder="taesd")))


def test_spec_names_missing_weights_and_passes_once_they_are_cached(offline_hub, tmp_path):
    text = yaml.safe_dump(spec_dict(tmp_path / "o", decoder="taesdxl"))
    with pytest.raises(ConfigError, match=r"decoder: decoder 'taesdxl' needs the trained weights .*madebyollin/taesdxl"):
        parse_spec(text)
    put_in_hub_cache(offline_hub, "taesdxl")
    assert parse_spec(text).decoder == "taesdxl"
    # The model's own VAE needs no hub weights; an architecture name alone is not a decoder.
    assert parse_spec(yaml.safe_dump(spec_dict(tmp_path / "o", decoder="sdxl-vae"))).decoder == "sdxl-vae"
    with pytest.raises(ConfigError, match="'tae-192' is an architecture without published weights"):
        parse_spec(yaml.safe_dump(spec_dict(tmp_path / "o", decoder="tae-192")))


def test_hub_environment_variables_are_honoured(tmp_path):
    """As a user runs it: HF_HOME and HF_HUB_OFFLINE in the environment of a fresh process."""
    put_in_hub_cache(tmp_path / "home" / "hub", "taesd", seed=2)
    code = (
        "import decoders\n"
        "print(decoders.load('taesd', device='cpu').name)\n"
        "try:\n    decoders.load('taesdxl')\n"
        "except decoders.WeightsUnavailable as e:\n    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    loaded, error = result.stdout.splitlines()[:2]
    assert loaded == "taesd"
    assert "madebyollin/taesdxl" in error and str(tmp_path / "home" / "hub") in error and "offline mode" in error
