"""Denoise stage: prompts and seeds -> latents, with the text encoders, UNet and scheduler."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.config import ModelConfig, SamplerConfig
from pipelines.models.loading import load_denoise_pipeline
from pipelines.stages.device import pick_device


class Denoise:
    def __init__(self, model: ModelConfig, sampler: SamplerConfig, device: str | None = None):
        self.sampler = sampler
        self.device = device or pick_device()
        self.pipe = load_denoise_pipeline(model.reference, model.dtype, sampler.scheduler, self.device).to(self.device)

    def __call__(self, batch: dict) -> dict:
        """`batch["samples"]`: dicts with key, prompt and seed. Returns the keys and float32 latents."""
        samples = batch["samples"]
        s = self.sampler
        # One CPU generator per sample: its initial noise depends on its seed alone, not on the
        # batch it lands in nor on the device.
        generators = [torch.Generator("cpu").manual_seed(sample["seed"]) for sample in samples]
        latents = self.pipe(
            prompt=[sample["prompt"] for sample in samples],
            negative_prompt=[s.negative_prompt] * len(samples) if s.negative_prompt else None,
            num_inference_steps=s.steps,
            guidance_scale=s.guidance_scale,
            height=s.height,
            width=s.width,
            generator=generators,
            output_type="latent",
        ).images
        return {
            "keys": [sample["key"] for sample in samples],
            "latents": latents.float().cpu().numpy().astype(np.float32, copy=False),
        }
