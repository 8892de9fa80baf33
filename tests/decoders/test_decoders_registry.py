"""Registry, parameter counts, save/load round trips (every decoder), loading paths."""

import os
import subprocess
import sys

import pytest
import torch

import decoders

IMAGE = ["sdxl-vae", "taesd", "tae-192", "effvit"]
VIDEO = ["tae-temporal", "svd-vae"]


def test_available_lists_published_names_then_random_builds():
    archs = ["sdxl-vae", "taesd", "tae-192", "effvit", "lean", "tae-temporal", "svd-vae"]
    published = ["taesd", "taesdxl", "sdxl-vae", "sdxl-vae-fp16-fix", "svd-vae"]
    random = [f"random:{a}" for a in archs] + [f"random:{a}-tiny" for a in archs]
    assert decoders.available() == published + random
    assert list(decoders.ARCHITECTURES) == archs


@pytest.mark.parametrize(
    "name, params_m",
    # published decoder sizes (SDXL VAE decoder includes post_quant_conv)
    [("sdxl-vae", 49.49), ("taesd", 1.22), ("tae-192", 10.97)],
)
def test_parameter_counts_match_published(name, params_m):
    dec = decoders.build(name, device="meta")
    assert round(dec.num_parameters() / 1e6, 2) == params_m


def test_attributes_of_every_registered_decoder():
    for name in decoders.ARCHITECTURES:
        dec = decoders.build(name, device="meta")
        assert dec.name == f"random:{name}"
        assert dec.latent_channels == 4 and dec.upscale_factor == 8
        assert dec.is_video == (name in VIDEO)
        assert isinstance(dec, torch.nn.Module)


def test_random_names_load_random_weights_from_a_fixed_seed(latents_for):
    a, b = decoders.load("random:taesd", device="cpu"), decoders.load("random:taesd", device="cpu")
    z = latents_for(a, batch=1)
    assert torch.equal(a.decode(z), b.decode(z))
    assert a.name == "random:taesd" and a.device.type == "cpu" and a.dtype == torch.float32
    assert a.latent_space is None  # random weights belong to no latent space


@pytest.mark.parametrize("name", IMAGE + VIDEO)
def test_save_pretrained_round_trip_gives_identical_outputs(tiny, name, tmp_path, latents_for):
    dec = tiny(name, seed=123)
    dec.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    back = decoders.load(str(tmp_path), device="cpu")
    assert back.name == dec.name and back.is_video == dec.is_video and type(back.model) is type(dec.model)
    z = latents_for(dec)
    assert torch.equal(back.decode(z), dec.decode(z))
    # weights really came from the file: a fresh build from the default seed decodes differently
    assert not torch.equal(tiny(name).decode(z), dec.decode(z))


def test_full_size_taesd_round_trip(tmp_path, latents_for):
    dec = decoders.build("taesd", seed=7, device="cpu")
    dec.save_pretrained(tmp_path / "taesd")
    back = decoders.load(tmp_path / "taesd", device="cpu")
    z = latents_for(dec, batch=1)
    assert torch.equal(back.decode(z), dec.decode(z))


def test_loads_vae_subfolder_of_a_saved_pipeline(tiny, tmp_path, latents_for):
    vae = tiny("sdxl-vae", seed=5).model  # a plain diffusers AutoencoderKL
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    dec = decoders.load(str(tmp_path / "pipe"), subfolder="vae", device="cpu")
    assert type(dec.model).__name__ == "AutoencoderKL"
    z = latents_for(dec)
    with torch.no_grad():
        ref = (vae.decode(z / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(dec.decode(z), ref, rtol=0, atol=1e-6)


def test_single_safetensors_file_with_config_in_header(tiny, tmp_path, latents_for):
    dec = tiny("effvit", seed=3)
    dec.save_file(tmp_path / "effvit.safetensors")
    back = decoders.load(str(tmp_path / "effvit.safetensors"), device="cpu")
    z = latents_for(dec)
    assert back.name == dec.name
    assert torch.equal(back.decode(z), dec.decode(z))


def test_safetensors_file_with_config_json_beside_it(tiny, tmp_path, latents_for):
    from safetensors.torch import save_file

    dec = tiny("tae-192", seed=4)
    save_file(dec.model.state_dict(), str(tmp_path / "weights.safetensors"))
    (tmp_path / "config.json").write_text(dec.model.to_json_string())
    back = decoders.load(str(tmp_path / "weights.safetensors"), device="cpu")
    z = latents_for(dec)
    assert torch.equal(back.decode(z), dec.decode(z))


def test_safetensors_file_without_any_config_says_how_to_give_one(tiny, tmp_path):
    from safetensors.torch import save_file

    save_file(tiny("taesd").model.state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(FileNotFoundError, match="config"):
        decoders.load(str(tmp_path / "w.safetensors"))


def test_fsspec_directory(tiny, latents_for):
    fsspec = pytest.importorskip("fsspec")
    dec = tiny("taesd", seed=9)
    import tempfile

    fs = fsspec.filesystem("memory")
    with tempfile.TemporaryDirectory() as td:
        dec.save_pretrained(td)
        for f in os.listdir(td):
            fs.pipe(f"/zoo/taesd/{f}", open(os.path.join(td, f), "rb").read())
    back = decoders.load("memory://zoo/taesd", device="cpu")
    z = latents_for(dec)
    assert torch.equal(back.decode(z), dec.decode(z))


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="'no-such-decoder' is not a registered decoder"):
        decoders.load("no-such-decoder")


def test_decoders_imports_neither_pipelines_nor_jobs():
    code = (
        "import sys, decoders, decoders.bench, decoders.flops, decoders.effvit, decoders.temporal;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pipelines', 'jobs'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hub_ids_take_the_hub_download_path_and_fail_clearly(monkeypatch):
    import huggingface_hub

    asked = []

    def offline(repo_id, filename, **kw):  # no network in tests: fail the way an offline hub does
        asked.append((repo_id, filename, kw.get("subfolder")))
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(decoders.WeightsUnavailable, match=r"someone/some-vae: vae/config.json .*OSError: offline"):
        decoders.load("someone/some-vae", subfolder="vae")
    assert asked == [("someone/some-vae", "config.json", "vae")]
