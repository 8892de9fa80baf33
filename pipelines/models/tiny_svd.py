"""A tiny Stable Video Diffusion built from the same diffusers classes as the real one, random weights.

UNetSpatioTemporalConditionModel, CLIPVisionModelWithProjection (+ CLIPImageProcessor) and
AutoencoderKLTemporalDecoder, a few channels wide, weights from fixed seeds: every machine with the
same torch builds the same model, and nothing is downloaded. It is saved once to the local cache
(pipelines/models/loading.py) and loaded from there with `from_pretrained`, the path real models take.
"""

from __future__ import annotations

import torch

TINY_SVD_VERSION = "tiny-svd-v1"
TINY_IMAGE_EMBED = 32
# SVD's image encoder always sees 224x224 (the pipeline resizes the conditioning image to that).
CLIP_IMAGE_SIZE = 224
# The UNet is conditioned on (fps - 1, motion bucket id, noise augmentation strength), each embedded.
TINY_TIME_EMBED = 8


def build_tiny_svd_pipeline():
    """The whole tiny StableVideoDiffusionPipeline, deterministic for a torch version."""
    # lazy: keeps diffusers, transformers out of processes that never call this
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=TINY_IMAGE_EMBED, projection_dim=TINY_IMAGE_EMBED, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, image_size=CLIP_IMAGE_SIZE, patch_size=32,
    ))
    torch.manual_seed(1)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=8,
        in_channels=8,  # noisy latents + the conditioning image's latents
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=TINY_IMAGE_EMBED,
        num_attention_heads=(2, 4),
        addition_time_embed_dim=TINY_TIME_EMBED,
        projection_class_embeddings_input_dim=3 * TINY_TIME_EMBED,
        num_frames=8,
    )
    torch.manual_seed(2)
    # Four levels, so latents are 8x smaller than frames as in SVD; its decoder fixes 32 norm groups.
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, layers_per_block=1, sample_size=64, scaling_factor=0.18215,
    )
    # stabilityai/stable-video-diffusion-img2vid scheduler_config.json
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
        interpolation_type="linear", sigma_max=700.0, sigma_min=0.002, steps_offset=1, timestep_spacing="leading",
        timestep_type="continuous", use_karras_sigmas=True,
    )
    feature_extractor = CLIPImageProcessor(crop_size=CLIP_IMAGE_SIZE, size=CLIP_IMAGE_SIZE)
    return StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler, feature_extractor=feature_extractor,
    )
