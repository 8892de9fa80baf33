"""Drop-in use with diffusers: decode a tiny SDXL / SVD pipeline's output_type="latent" output with
each decoder, compare with the pipeline's own decoding, and swap a decoder in as `pipe.vae`.

The pipelines are tiny (random weights, built from configs, no tokenizer: prompt embeddings are
passed directly), but the classes and code paths are diffusers' own.
"""

import pytest
import torch

import decoders


@pytest.fixture(scope="module")
def sdxl_pipe():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=8,
    )
    text = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                vocab_size=1000, projection_dim=32)
    pipe = StableDiffusionXLPipeline(
        vae=decoders.build("sdxl-vae", tiny=True, seed=1).model,
        text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text)),
        tokenizer=None, tokenizer_2=None, unet=unet, scheduler=EulerDiscreteScheduler(),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sdxl_call(pipe, output_type):
    g = torch.Generator().manual_seed(0)
    e = torch.Generator().manual_seed(1)
    embeds = dict(
        prompt_embeds=torch.randn(1, 8, 64, generator=e), pooled_prompt_embeds=torch.randn(1, 32, generator=e),
        negative_prompt_embeds=torch.randn(1, 8, 64, generator=e),
        negative_pooled_prompt_embeds=torch.randn(1, 32, generator=e),
    )
    return pipe(**embeds, height=64, width=64, num_inference_steps=2, generator=g, output_type=output_type).images


def test_sdxl_latents_decode_like_the_pipeline_itself(sdxl_pipe):
    latents = _sdxl_call(sdxl_pipe, "latent")
    assert latents.shape == (1, 4, 8, 8)
    images = _sdxl_call(sdxl_pipe, "pt")  # the pipeline's own VAE decode + postprocess
    ours = decoders.Decoder(sdxl_pipe.vae, "pipeline-vae").decode(latents)
    torch.testing.assert_close(ours, images, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["sdxl-vae", "taesd", "tae-192", "effvit"])
def test_every_image_decoder_decodes_sdxl_latents(sdxl_pipe, name):
    latents = _sdxl_call(sdxl_pipe, "latent")
    x = decoders.build(name, tiny=True).decode(latents)
    assert x.shape == (1, 3, 64, 64) and 0 <= x.min() and x.max() <= 1


@pytest.mark.parametrize("name", ["taesd", "tae-192", "effvit"])
def test_lightweight_decoder_as_pipe_vae(sdxl_pipe, name):
    """diffusers runs our decoder itself (its scaling_factor, its decode) and gets our result."""
    dec = decoders.build(name, tiny=True)
    latents = _sdxl_call(sdxl_pipe, "latent")
    original = sdxl_pipe.vae
    try:
        sdxl_pipe.vae = dec.model
        images = _sdxl_call(sdxl_pipe, "pt")
    finally:
        sdxl_pipe.vae = original
    assert images.shape == (1, 3, 64, 64)
    torch.testing.assert_close(images, dec.decode(latents), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def svd_pipe():
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32, num_attention_heads=(2, 4), projection_class_embeddings_input_dim=3 * 8,
        addition_time_embed_dim=8,
    )
    vision = CLIPVisionConfig(hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
                              image_size=224, intermediate_size=37, patch_size=32)
    pipe = StableVideoDiffusionPipeline(
        vae=decoders.build("svd-vae", tiny=True, seed=1).model,
        image_encoder=CLIPVisionModelWithProjection(vision), unet=unet,
        scheduler=EulerDiscreteScheduler(prediction_type="v_prediction", use_karras_sigmas=True,
                                         timestep_type="continuous", sigma_max=700.0, sigma_min=0.002),
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _svd_call(pipe, output_type):
    from PIL import Image

    pixels = torch.randint(0, 256, (64, 64, 3), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    image = Image.fromarray(pixels.numpy())  # a PIL image takes SVD's resize-for-CLIP path
    g = torch.Generator().manual_seed(0)
    return pipe(image, height=64, width=64, num_frames=3, num_inference_steps=2, decode_chunk_size=3,
                generator=g, output_type=output_type).frames


def test_svd_latents_decode_like_the_pipeline_itself(svd_pipe):
    latents = _svd_call(svd_pipe, "latent")
    assert latents.shape == (1, 3, 4, 8, 8)
    frames = _svd_call(svd_pipe, "pt")
    dec = decoders.Decoder(svd_pipe.vae, "pipeline-vae")
    assert dec.is_video  # detected from decode(..., num_frames)
    torch.testing.assert_close(dec.decode(latents), frames, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["tae-temporal", "svd-vae"])
def test_temporal_decoders_decode_svd_latents(svd_pipe, name):
    latents = _svd_call(svd_pipe, "latent")
    x = decoders.build(name, tiny=True).decode(latents)
    assert x.shape == (1, 3, 3, 64, 64) and 0 <= x.min() and x.max() <= 1


def test_temporal_decoder_in_the_svd_pipelines_own_decode_path(svd_pipe):
    """SVD also encodes its conditioning image with `pipe.vae`, so a decoder-only model cannot
    replace it for a whole call; its decode path (decode_latents) does take ours."""
    dec = decoders.build("tae-temporal", tiny=True)
    latents = _svd_call(svd_pipe, "latent")
    original = svd_pipe.vae
    try:
        svd_pipe.vae = dec.model
        frames = svd_pipe.decode_latents(latents, num_frames=3, decode_chunk_size=3)  # (B, C, F, H, W) in [-1, 1]
    finally:
        svd_pipe.vae = original
    ours = dec.decode(latents)
    torch.testing.assert_close((frames.permute(0, 2, 1, 3, 4) / 2 + 0.5).clamp(0, 1), ours, rtol=0, atol=1e-5)
