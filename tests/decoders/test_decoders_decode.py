"""decode(): shape, range, scaling applied exactly once, input validation, fp16 upcast, tiling,
temporal mixing, and the EfficientViT decoder's attention."""

import pytest
import torch

import decoders

IMAGE = ["sdxl-vae", "taesd", "tae-192", "effvit"]
VIDEO = ["tae-temporal", "svd-vae"]


@pytest.mark.parametrize("name", IMAGE)
def test_image_decoders_shape_range_dtype(tiny, latents_for, name):
    dec = tiny(name)
    x = dec.decode(latents_for(dec, h=6, w=10))
    assert x.shape == (2, 3, 48, 80) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert x.std() > 0  # not a constant image


@pytest.mark.parametrize("name", VIDEO)
def test_video_decoders_shape_range_dtype(tiny, latents_for, name):
    dec = tiny(name)
    x = dec.decode(latents_for(dec, frames=3, h=4, w=6))
    assert x.shape == (2, 3, 3, 32, 48) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0


def _diffusers_decode(dec, z):
    """What a diffusers pipeline does: divide by scaling_factor, vae.decode, map [-1, 1] -> [0, 1]."""
    m = dec.model
    with torch.no_grad():
        if dec.is_video:
            b, f = z.shape[:2]
            out = m.decode(z.flatten(0, 1) / m.config.scaling_factor, num_frames=f).sample
            return (out / 2 + 0.5).clamp(0, 1).unflatten(0, (b, f))
        return (m.decode(z / m.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("name", IMAGE + VIDEO)
def test_output_is_scaled_exactly_once(tiny, latents_for, name):
    """Equal to diffusers' own decode mapped once from [-1, 1]: scaling neither skipped nor doubled
    (applying 2x-1 twice, as the paper's examples do, would fail this)."""
    dec = tiny(name)
    z = latents_for(dec) * 2
    torch.testing.assert_close(dec.decode(z), _diffusers_decode(dec, z), rtol=0, atol=1e-6)


def test_latent_scaling_is_the_decoders_own(tiny):
    assert tiny("sdxl-vae").model.config.scaling_factor == 0.13025
    assert tiny("svd-vae").model.config.scaling_factor == 0.18215
    for name in ("taesd", "tae-192", "effvit", "tae-temporal"):  # TAESD-class: latents at scale 1.0
        assert tiny(name).model.config.scaling_factor == 1.0


def test_latents_mean_std_are_applied_like_diffusers(latents_for):
    dec = decoders.build("sdxl-vae", tiny=True)
    cfg = dict(dec.model.config)
    mean, std = [0.1, -0.2, 0.3, 0.0], [0.9, 1.1, 1.0, 0.8]
    dec.model.register_to_config(latents_mean=mean, latents_std=std)
    z = latents_for(dec)
    expected = z * torch.tensor(std).view(1, 4, 1, 1) / cfg["scaling_factor"] + torch.tensor(mean).view(1, 4, 1, 1)
    torch.testing.assert_close(dec.to_decoder_space(z), expected)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: torch.randn(1, 8, 8, 8), r"expected 4 latent channels .* got 8"),
        (lambda: torch.randn(4, 8, 8), r"expected latents of rank 4 \(B, C, h, w\), got rank 3"),
        (lambda: torch.randn(1, 2, 4, 8, 8), r"expected latents of rank 4 .* got rank 5"),
        (lambda: torch.randint(0, 5, (1, 4, 8, 8)), r"expected floating-point latents, got dtype torch.int64"),
        (lambda: torch.full((1, 4, 8, 8), float("nan")), r"expected finite latents, got 256 NaN and 0 Inf"),
        (lambda: torch.tensor([float("inf")]).expand(1, 4, 2, 2).clone(), r"got 0 NaN and 16 Inf"),
    ],
)
def test_bad_image_latents_raise_clear_errors(tiny, make, message):
    with pytest.raises(ValueError, match=message):
        tiny("taesd").decode(make())


def test_bad_video_latents_raise_clear_errors(tiny):
    dec = tiny("tae-temporal")
    with pytest.raises(ValueError, match=r"rank 5 \(B, F, C, h, w\), got rank 4"):
        dec.decode(torch.randn(3, 4, 8, 8))
    with pytest.raises(ValueError, match="expected 4 latent channels"):
        dec.decode(torch.randn(1, 3, 16, 8, 8))


def test_fp16_sdxl_vae_decodes_in_fp32_as_diffusers_does(latents_for):
    dec = decoders.build("sdxl-vae", tiny=True, device="cpu", dtype=torch.float16)
    assert dec.model.config.force_upcast and dec.dtype == torch.float32
    ref = decoders.build("sdxl-vae", tiny=True, device="cpu")
    z = latents_for(dec)
    torch.testing.assert_close(dec.decode(z), ref.decode(z), rtol=0, atol=1e-3)
    dec.half()  # a later .half() is caught at decode time too
    dec.decode(z)
    assert dec.dtype == torch.float32


def test_fp16_tiny_decoder_stays_fp16_and_returns_fp32(latents_for):
    dec = decoders.build("taesd", tiny=True, device="cpu", dtype=torch.float16)
    assert dec.dtype == torch.float16
    z = latents_for(dec)  # float32 input is cast to the module's dtype
    x = dec.decode(z)
    assert x.dtype == torch.float32
    ref = decoders.build("taesd", tiny=True, device="cpu").decode(z)
    torch.testing.assert_close(x, ref, rtol=0, atol=2e-2)


@pytest.mark.parametrize("name", ["sdxl-vae", "taesd"])
def test_tiled_decoding(tiny, latents_for, name):
    dec = tiny(name)
    z = latents_for(dec, h=16, w=16, batch=1)
    whole, tiled = dec.decode(z), dec.decode(z, tile=64)
    assert tiled.shape == whole.shape == (1, 3, 128, 128)
    assert 0 <= tiled.min() and tiled.max() <= 1
    assert not torch.equal(tiled, whole)  # tiles really were decoded separately
    assert torch.equal(dec.decode(z), whole)  # tiling settings are restored afterwards
    dec.tiling = 64
    assert torch.equal(dec.decode(z), tiled)
    dec.tiling = False


def test_tiling_refused_where_unsupported(tiny, latents_for):
    dec = tiny("effvit")
    with pytest.raises(ValueError, match="tiled decoding is not supported"):
        dec.decode(latents_for(dec), tile=True)


def test_temporal_decoder_mixes_frames_causally(tiny, latents_for):
    dec = tiny("tae-temporal")
    z = latents_for(dec, frames=3, batch=2)
    base = dec.decode(z)
    z2 = z.clone()
    z2[0, 1] += 1.0  # change frame 1 of video 0
    out = dec.decode(z2)
    assert torch.equal(out[0, 0], base[0, 0])  # the past does not see the future
    assert not torch.equal(out[0, 2], base[0, 2])  # later frames see it: temporal mixing is real
    assert torch.equal(out[1], base[1])  # videos in a batch do not mix


def test_effvit_has_real_attention_blocks():
    from diffusers.models.attention_processor import SanaMultiscaleLinearAttention

    dec = decoders.build("effvit", device="meta")
    attn = [m for m in dec.modules() if isinstance(m, SanaMultiscaleLinearAttention)]
    assert len(attn) == 5  # 2 + 3 EfficientViT blocks in the two low-resolution stages


def test_effvit_attention_runs_during_decode(tiny, latents_for):
    from diffusers.models.attention_processor import SanaMultiscaleLinearAttention

    dec = tiny("effvit")
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1))
             for m in dec.modules() if isinstance(m, SanaMultiscaleLinearAttention)]
    dec.decode(latents_for(dec))
    for h in hooks:
        h.remove()
    assert len(calls) == len(hooks) > 0


def test_effvit_refuses_a_config_without_attention():
    from decoders.effvit import EfficientViTDecoder

    with pytest.raises(ValueError, match="at least one EfficientViTBlock"):
        EfficientViTDecoder(layers_per_block=(1, 1, 0, 0))
