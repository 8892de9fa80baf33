"""The published configurations of SDXL base 1.0 and SVD-XT, as plain data (no downloads).

Values are those of the model repositories' config files (the keys a diffusers or transformers
constructor takes; keys equal to the library defaults are left out):
  SDXL base 1.0  stabilityai/stable-diffusion-xl-base-1.0: unet/config.json, text_encoder/config.json,
                 text_encoder_2/config.json, vae/config.json, scheduler/scheduler_config.json
  SVD-XT         stabilityai/stable-video-diffusion-img2vid-xt: unet/config.json,
                 image_encoder/config.json, vae/config.json, scheduler/scheduler_config.json,
                 feature_extractor/preprocessor_config.json
The VAEs are the decoder registry's `sdxl-vae` and `svd-vae` architectures (decoders/registry.py),
the same config files. PARAMETERS pins each part's parameter count; tests/test_random_models.py
checks them on the meta device, and docs/gpu-benchmark.md says where each figure is published.
"""

from __future__ import annotations

SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[320, 640, 1280],
    layers_per_block=2,
    attention_head_dim=[5, 10, 20],
    transformer_layers_per_block=[1, 2, 10],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
    norm_eps=1e-5,
    flip_sin_to_cos=True,
    freq_shift=0,
)

# CLIP ViT-L/14's text tower (text_encoder) and OpenCLIP ViT-bigG/14's (text_encoder_2).
_CLIP_TEXT = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                  layer_norm_eps=1e-5)
SDXL_TEXT_ENCODER = dict(_CLIP_TEXT, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu")
SDXL_TEXT_ENCODER_2 = dict(_CLIP_TEXT, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                           num_attention_heads=20, projection_dim=1280, hidden_act="gelu")

SDXL_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    interpolation_type="linear",
    steps_offset=1,
    timestep_spacing="leading",
    use_karras_sigmas=False,
)

SVD_XT_UNET = dict(
    sample_size=96,
    in_channels=8,  # noisy latents + the conditioning image's latents
    out_channels=4,
    down_block_types=["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
    up_block_types=["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
    block_out_channels=[320, 640, 1280, 1280],
    layers_per_block=2,
    num_attention_heads=[5, 10, 20, 20],
    transformer_layers_per_block=1,
    cross_attention_dim=1024,
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=768,
    num_frames=25,
)

# OpenCLIP ViT-H/14's image tower.
SVD_XT_IMAGE_ENCODER = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                            image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu",
                            num_channels=3, layer_norm_eps=1e-5)
SVD_XT_FEATURE_EXTRACTOR = dict(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                do_center_crop=True, do_normalize=True, do_resize=True, resample=3,
                                image_mean=[0.48145466, 0.4578275, 0.40821073],
                                image_std=[0.26862954, 0.26130258, 0.27577711])
SVD_XT_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    interpolation_type="linear",
    sigma_max=700.0,
    sigma_min=0.002,
    steps_offset=1,
    timestep_spacing="leading",
    timestep_type="continuous",
    use_karras_sigmas=True,
)

# Exact parameter counts of each part, as the published checkpoints hold them.
PARAMETERS = {
    "sdxl": {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840, "vae": 83_653_863},
    "svd-xt": {"unet": 1_524_623_082, "image_encoder": 632_076_800, "vae": 97_742_847},
}
