"""Encode stage: pixels -> a frozen VAE encoder -> latents as the diffusion model sees them."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.models.decoding import load_decoder
from pipelines.stages.decode import encode_image, npy_bytes
from pipelines.stages.device import pick_device


class Encode:
    def __init__(
        self,
        encoder: str,
        model_reference: str,
        latent_dtype: str = "float32",
        image_format: str = "png",
        quality: int = 95,
        dtype: str = "float32",
        batch_size: int | None = None,
        device: str | None = None,
    ):
        self.device = device or pick_device()
        self.vae = load_decoder(encoder, model_reference, self.device, dtype)
        if not self.vae.can_encode:
            raise ValueError(f"encoder: {encoder!r} has no image encoder (an autoencoder such as sdxl-vae is needed)")
        self.latent_dtype = np.dtype(latent_dtype)
        self.image_format, self.quality, self.batch_size = image_format, quality, batch_size
        self.fields = {"latent_dtype": latent_dtype, "latent_scaling_factor": float(self.vae.config.scaling_factor),
                       "encoder": encoder}

    def __call__(self, batch: dict) -> dict:
        pixels = batch["pixels"]
        if not len(pixels):
            return {"keys": [], "files": [], "fields": []}
        # Pixels from the object store are read-only; torch.tensor copies (from_numpy would warn).
        x = torch.tensor(pixels).permute(0, 3, 1, 2).float() / 255.0
        chunk = self.batch_size or len(x)
        latents = torch.cat([self.vae.encode(part) for part in x.split(chunk)]).cpu().numpy()
        files = [
            {self.image_format: encode_image(p, self.image_format, self.quality),
             "latent.npy": npy_bytes(z.astype(self.latent_dtype))}
            for p, z in zip(pixels, latents)
        ]
        fields = {"height": int(pixels.shape[1]), "width": int(pixels.shape[2]),
                  "latent_shape": list(latents.shape[1:]), **self.fields}
        return {"keys": list(batch["keys"]), "files": files, "fields": [fields] * len(files)}
