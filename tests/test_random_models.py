"""`random:sdxl` and `random:svd-xt`: the published architectures, exact sizes, seeded weights, labelled noise.

The full-size models are built on the meta device here (no memory); a full SDXL in fp32 needs ~14 GB,
so the CPU run of the whole job is recorded in docs/gpu-benchmark.md, not repeated in CI.
"""

from __future__ import annotations

import logging

import pytest
import torch
import yaml

from jobs.local import pipeline_for
from jobs.spec import parse_spec
from pipelines.errors import ConfigError
from pipelines.models.fingerprint import model_fingerprint
from pipelines.models.loading import ensure_tiny_sdxl, load_denoise_pipeline
from pipelines.models.published import PARAMETERS
from pipelines.models.random_build import materialise, sdxl_parts, seeded_fill_, svd_xt_parts
from pipelines.models.random_models import NOISE_NOTE, RANDOM_VERSION
from pipelines.observe.report import weights_note
from tests.support.jobspecs import kind_spec_dict, spec_dict


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sdxl_parts_have_the_published_parameter_counts():
    parts = sdxl_parts("meta")
    assert count(parts["unet"]) == 2_567_463_684  # SDXL base 1.0 UNet
    assert {name: count(part) for name, part in parts.items()} == PARAMETERS["sdxl"]
    assert all(p.is_meta for part in parts.values() for p in part.parameters())  # no memory spent


def test_svd_xt_parts_have_the_published_parameter_counts():
    parts = svd_xt_parts("meta")
    assert count(parts["unet"]) == 1_524_623_082
    assert {name: count(part) for name, part in parts.items()} == PARAMETERS["svd-xt"]
    assert parts["vae"].is_video and not sdxl_parts("meta")["vae"].is_video


def test_random_sdxl_tiny_is_the_tiny_models_architecture_built_the_random_way(cache_dir):
    random_tiny = load_denoise_pipeline("random:sdxl-tiny", "float32", "default", "cpu")
    saved_tiny = load_denoise_pipeline("tiny", "float32", "default", "cpu")
    for name in ("unet", "text_encoder", "text_encoder_2"):
        assert count(getattr(random_tiny, name)) == count(getattr(saved_tiny, name)), name
    assert random_tiny.vae is None and ensure_tiny_sdxl().exists()  # the decode stage owns the VAE
    vae = sdxl_parts("meta", reference="random:sdxl-tiny")["vae"]
    assert count(vae.model) < 10**6 and vae.latent_channels == 4  # the registry's tiny SDXL VAE, not the full one


def _tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=16, projection_dim=64,
                                        bos_token_id=0, eos_token_id=2, pad_token_id=1))


def test_materialised_weights_are_seeded_in_the_dtype_and_scaled_by_fan_in():
    a = materialise(_tiny_text_encoder, "cpu", torch.bfloat16, seed=0)
    b = materialise(_tiny_text_encoder, "cpu", torch.bfloat16, seed=0)
    c = materialise(_tiny_text_encoder, "cpu", torch.bfloat16, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(t.dtype == torch.bfloat16 for n, t in sa.items() if "position_ids" not in n)
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert not torch.equal(sa["encoder.layers.0.mlp.fc1.weight"], sc["encoder.layers.0.mlp.fc1.weight"])
    # to_empty leaves buffers uninitialised: CLIP's token positions are filled in again.
    assert torch.equal(a.embeddings.position_ids[0], torch.arange(16))
    fc1 = a.encoder.layers[0].mlp.fc1.weight.float()  # (96, 64): variance 1/64
    assert abs(fc1.var().item() * 64 - 1) < 0.1
    assert torch.all(a.final_layer_norm.weight == 1) and torch.all(a.final_layer_norm.bias == 0)
    out = a(input_ids=torch.tensor([[0, 5, 7, 2]])).last_hidden_state
    assert torch.isfinite(out.float()).all()


def test_an_unknown_buffer_is_refused_rather_than_left_uninitialised():
    model = torch.nn.BatchNorm1d(4).to_empty(device="cpu")  # running_mean, running_var, num_batches_tracked
    with pytest.raises(RuntimeError, match="no initialisation known for buffer 'running_mean'"):
        seeded_fill_(model, 0)


def _parse(spec: dict, overrides=()):
    return parse_spec(yaml.safe_dump(spec, sort_keys=False), source="job.yaml", overrides=list(overrides))


def test_random_models_are_references_of_their_own_kind_of_job(tmp_path):
    spec = _parse(spec_dict(str(tmp_path / "o")), ["model.reference=random:sdxl"])
    assert spec.model.reference == "random:sdxl"
    with pytest.raises(ConfigError, match=r"--set model.reference=random:svd-xt: model.reference: 'random:svd-xt' is a 'svd' model; this job "
                                          r"needs a 'sdxl' model \(random:sdxl, random:sdxl-tiny for random weights\)"):
        _parse(spec_dict(str(tmp_path / "o")), ["model.reference=random:svd-xt"])
    video = kind_spec_dict("generate-video", str(tmp_path / "v"))
    assert _parse(video, ["model.reference=random:svd-xt"]).model.reference == "random:svd-xt"
    with pytest.raises(ConfigError, match="'random:sdxl' is a 'sdxl' model; this job needs a 'svd' model"):
        _parse(video, ["model.reference=random:sdxl"])
    with pytest.raises(ConfigError, match=r"'random:sd' is neither 'tiny', random:sdxl or random:svd-xt"):
        _parse(spec_dict(str(tmp_path / "o")), ["model.reference=random:sd"])


def test_every_sample_and_report_of_a_random_model_says_it_is_noise(tmp_path):
    spec = _parse(spec_dict(str(tmp_path / "o")), ["model.reference=random:sdxl"])
    assert pipeline_for(spec).sample_metadata["weights"] == NOISE_NOTE
    assert "weights" not in pipeline_for(_parse(spec_dict(str(tmp_path / "o")))).sample_metadata
    assert weights_note({"spec": spec.to_dict()}) == f"model.reference random:sdxl: {NOISE_NOTE}"
    assert weights_note({"spec": {"model": {"reference": "tiny"}}}) is None
    # The job identity names the build (configs + fill), so a changed build is not resumed into.
    assert model_fingerprint("random:svd-xt") == {"builtin": "random:svd-xt", "version": RANDOM_VERSION}


def test_fp16_sdxl_vae_upcast_suggests_the_fp16_fix(caplog):
    import decoders

    with caplog.at_level(logging.INFO, logger="decoders.base"):
        dec = decoders.build("random:sdxl-vae-tiny", device="cpu", dtype=torch.float16)
    assert dec.dtype == torch.float32
    assert "decoder: sdxl-vae-fp16-fix (madebyollin/sdxl-vae-fp16-fix) decodes in float16" in caplog.text
