"""Denoise stage: prompts and seeds -> latents, with the text encoders, UNet and scheduler."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.config import ModelConfig, SamplerConfig
from pipelines.models.loading import load_denoise_pipeline
from pipelines.stages.device import pick_device
from pipelines.stages.gpu_settings import configure_backends, prepare, timed

WARMUP_STEPS = 2  # the compiled graphs are the same for any number of steps


class Denoise:
    def __init__(self, model: ModelConfig, sampler: SamplerConfig, device: str | None = None,
                 batch_size: int | None = None):
        self.sampler = sampler
        self.device = device or pick_device()
        self.backends = configure_backends(self.device)
        self.pipe = load_denoise_pipeline(model.reference, model.dtype, sampler.scheduler, self.device).to(self.device)
        prepare(self.pipe.unet, channels_last=model.channels_last, compile=model.compile)
        # Compiling happens on the first call: do it now, at the batch shape the job uses, so that
        # the stage's throughput is steady from its first batch and the compile time is its own figure.
        self.compile_s = None
        if model.compile:
            warmup = [{"prompt": "warm-up", "seed": i} for i in range(batch_size or 1)]
            self.compile_s = timed(lambda: self.generate(warmup, WARMUP_STEPS))

    def generate(self, samples: list[dict], steps: int) -> torch.Tensor:
        s = self.sampler
        # One CPU generator per sample: its initial noise depends on its seed alone, not on the
        # batch it lands in nor on the device.
        generators = [torch.Generator("cpu").manual_seed(sample["seed"]) for sample in samples]
        return self.pipe(
            prompt=[sample["prompt"] for sample in samples],
            negative_prompt=[s.negative_prompt] * len(samples) if s.negative_prompt else None,
            num_inference_steps=steps,
            guidance_scale=s.guidance_scale,
            height=s.height,
            width=s.width,
            generator=generators,
            output_type="latent",
        ).images

    def __call__(self, batch: dict) -> dict:
        """`batch["samples"]`: dicts with key, prompt and seed. Returns the keys and float32 latents."""
        samples = batch["samples"]
        latents = self.generate(samples, self.sampler.steps)
        return {
            "keys": [sample["key"] for sample in samples],
            "latents": latents.float().cpu().numpy().astype(np.float32, copy=False),
        }
