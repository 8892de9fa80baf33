"""Build the random full-size models (pipelines/models/random_models.py says what they are).

Each part is built on the meta device (no memory, no initialisers), allocated on the target device
in the target dtype with `to_empty`, then filled from a fixed seed in one pass of in-place fills.
"""

from __future__ import annotations

import math

import torch

import decoders
from decoders.loading import model_class
from pipelines.models import published
from pipelines.models.random_models import RANDOM_MODELS, RANDOM_SDXL, RANDOM_SDXL_TINY, RANDOM_SVD_XT, SEED
from pipelines.models.tiny_sdxl import TINY_SCHEDULER, TINY_UNET, build_tiny_tokenizer, tiny_text_config


def materialise(make, device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """`make()` built on the meta device, allocated on `device` in `dtype`, filled from `seed`.
    device="meta" stops after the build: the architecture without memory (parameter counts)."""
    with torch.device("meta"):
        model = make().to(dtype=dtype)
    if torch.device(device).type != "meta":
        model = model.to_empty(device=device)
        seeded_fill_(model, seed)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def seeded_fill_(model: torch.nn.Module, seed: int) -> None:
    """Matrices and kernels uniform with variance 1/fan_in (activations keep their scale through
    the depth, so fp16 does not overflow on weights alone; uniform fills faster than normal on a
    CPU), norm scales 1, biases and other vectors 0."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            bound = math.sqrt(3.0 / p[0].numel())
            p.uniform_(-bound, bound, generator=generator)
        elif name.endswith("weight"):
            p.fill_(1.0)
        else:
            p.zero_()
    for name, buffer in model.named_buffers():
        if name.endswith("position_ids"):  # CLIP's token positions, 0..n-1
            buffer.copy_(torch.arange(buffer.shape[-1], device=device).expand_as(buffer))
        else:  # to_empty left it uninitialised: refuse rather than compute with garbage
            raise RuntimeError(f"{type(model).__name__}: no initialisation known for buffer {name!r}")


def sdxl_configs(reference: str) -> dict:
    """The configs of an SDXL-family random model: SDXL base 1.0's published ones, or the tiny model's."""
    if reference == RANDOM_SDXL_TINY:
        return {"unet": TINY_UNET, "text_encoder": tiny_text_config(), "text_encoder_2": tiny_text_config(),
                "scheduler": TINY_SCHEDULER}
    return {"unet": published.SDXL_UNET, "text_encoder": published.SDXL_TEXT_ENCODER,
            "text_encoder_2": published.SDXL_TEXT_ENCODER_2, "scheduler": published.SDXL_SCHEDULER}


def sdxl_parts(device="cpu", dtype: torch.dtype = torch.float32, with_vae: bool = True,
               reference: str = RANDOM_SDXL) -> dict:
    """SDXL base 1.0's UNet, text encoders and (a `decoders.Decoder`) VAE (`reference`: random:sdxl-tiny
    for the tiny model's sizes)."""
    # lazy: keeps diffusers, transformers out of processes that never call this
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = sdxl_configs(reference)
    parts = {
        "unet": materialise(lambda: UNet2DConditionModel(**configs["unet"]), device, dtype, SEED),
        "text_encoder": materialise(lambda: CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
                                    device, dtype, SEED + 1),
        "text_encoder_2": materialise(
            lambda: CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"])), device, dtype, SEED + 2
        ),
    }
    if with_vae:
        parts["vae"] = random_vae(reference, device, dtype)
    return parts


def svd_xt_parts(device="cpu", dtype: torch.dtype = torch.float32) -> dict:
    """SVD-XT's UNet, image encoder and (a `decoders.Decoder`) temporal VAE."""
    # lazy: keeps diffusers, transformers out of processes that never call this
    from diffusers import UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return {
        "unet": materialise(lambda: UNetSpatioTemporalConditionModel(**published.SVD_XT_UNET), device, dtype, SEED),
        "image_encoder": materialise(
            lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**published.SVD_XT_IMAGE_ENCODER)), device, dtype,
            SEED + 1,
        ),
        "vae": random_vae(RANDOM_SVD_XT, device, dtype),
    }


def build_random_sdxl(device="cpu", dtype: torch.dtype = torch.float32, with_vae: bool = True,
                      reference: str = RANDOM_SDXL):
    """StableDiffusionXLPipeline of SDXL base 1.0's architecture (or random:sdxl-tiny's); `with_vae=False`
    leaves the VAE out (the decode stage owns decoding)."""
    # lazy: keeps diffusers out of processes that never call this
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    parts = sdxl_parts(device, dtype, with_vae, reference)
    return StableDiffusionXLPipeline(
        vae=parts["vae"].model if with_vae else None, text_encoder=parts["text_encoder"],
        text_encoder_2=parts["text_encoder_2"], tokenizer=build_tiny_tokenizer(), tokenizer_2=build_tiny_tokenizer(),
        unet=parts["unet"], scheduler=EulerDiscreteScheduler(**sdxl_configs(reference)["scheduler"]),
        add_watermarker=False,
    )


def build_random_svd_xt(device="cpu", dtype: torch.dtype = torch.float32):
    """StableVideoDiffusionPipeline of SVD-XT's architecture (its VAE's encoder makes the
    conditioning latents)."""
    # lazy: keeps diffusers, transformers out of processes that never call this
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from transformers import CLIPImageProcessor

    parts = svd_xt_parts(device, dtype)
    return StableVideoDiffusionPipeline(
        vae=parts["vae"].model, image_encoder=parts["image_encoder"], unet=parts["unet"],
        scheduler=EulerDiscreteScheduler(**published.SVD_XT_SCHEDULER),
        feature_extractor=CLIPImageProcessor(**published.SVD_XT_FEATURE_EXTRACTOR),
    )


def random_vae(reference: str, device, dtype: torch.dtype):
    """The model's own VAE (a `decoders.Decoder`), full size, random weights, on `device`. In
    float16 it is upcast when it decodes (`Decoder.upcast_if_needed`), as diffusers' pipelines do."""
    entry = decoders.lookup(RANDOM_MODELS[reference].vae)
    arch = entry.architecture
    config = arch.tiny if entry.tiny else arch.config
    model = materialise(lambda: model_class(arch.class_name).from_config(config), device, dtype, SEED + 3)
    return decoders.Decoder(model, entry.name, is_video=entry.is_video).eval()
