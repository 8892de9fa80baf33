"""A tiny SDXL built from the same diffusers classes as the real one, with random weights.

It exists so that tests, demos and benchmarks run on machines without GPUs or model weights. The
weights come from fixed seeds, so every machine with the same torch builds the same model. The CLIP
tokenizer is a byte-level BPE with no merges whose vocabulary we generate here, so nothing is
downloaded.
"""

from __future__ import annotations

import torch

TINY_TEXT_HIDDEN = 32
TINY_TEXT_VOCAB = 1000
TINY_TIME_EMBED = 8


def _byte_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level BPE maps every byte to a printable character so text never hits
    # whitespace or control characters inside the vocabulary.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def tiny_clip_vocab() -> dict[str, int]:
    """Every byte as a token, alone and as a word end, then CLIP's two special tokens."""
    chars = list(_byte_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def build_tiny_tokenizer():
    # lazy: keeps transformers out of processes that never call this
    from transformers import CLIPTokenizer

    # CLIP's merges file starts with a version header; an empty merge list is valid BPE.
    return CLIPTokenizer(vocab=tiny_clip_vocab(), merges=[], model_max_length=77)


def tiny_text_config() -> dict:
    """The CLIPTextConfig values of both tiny text encoders."""
    vocab = tiny_clip_vocab()
    return dict(
        vocab_size=TINY_TEXT_VOCAB,
        hidden_size=TINY_TEXT_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=TINY_TEXT_HIDDEN,
        hidden_act="gelu",
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )


TINY_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),
    transformer_layers_per_block=(1, 1),
    use_linear_projection=True,
    # SDXL's micro-conditioning: 6 time ids embedded, plus the pooled text embedding.
    addition_embed_type="text_time",
    addition_time_embed_dim=TINY_TIME_EMBED,
    projection_class_embeddings_input_dim=6 * TINY_TIME_EMBED + TINY_TEXT_HIDDEN,
    cross_attention_dim=2 * TINY_TEXT_HIDDEN,
    norm_num_groups=8,
)
TINY_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    timestep_spacing="leading",
)


def build_tiny_sdxl_pipeline():
    """The whole tiny StableDiffusionXLPipeline (VAE included), deterministic for a torch version."""
    # lazy: keeps diffusers, transformers out of processes that never call this
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text_config = CLIPTextConfig(**tiny_text_config())
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(text_config)
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    torch.manual_seed(2)
    unet = UNet2DConditionModel(**TINY_UNET)
    torch.manual_seed(3)
    # Four levels, so latents are 8x smaller than images as in SDXL: every decoder fits.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=128,
        scaling_factor=0.13025,
    )
    scheduler = EulerDiscreteScheduler(**TINY_SCHEDULER)
    tokenizer = build_tiny_tokenizer()
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=build_tiny_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
