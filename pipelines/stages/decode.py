"""Decode stage: latents -> pixels -> encoded image bytes, with a decoder from `decoders/`."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from pipelines.models.decoding import load_decoder
from pipelines.stages.device import pick_device
from pipelines.stages.gpu_settings import configure_backends, prepare, timed
from pipelines.stages.monitored import is_monitored

PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


def encode_image(pixels: np.ndarray, image_format: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": quality} if image_format in ("jpg", "webp") else {}
    Image.fromarray(pixels).save(buffer, format=PIL_FORMATS[image_format], **options)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class Decode:
    def __init__(
        self,
        decoder: str,
        model_reference: str,
        image_format: str,
        quality: int = 95,
        save_latents: bool = False,
        dtype: str = "float32",
        tiling: bool | int = False,
        batch_size: int | None = None,
        device: str | None = None,
        monitor_fraction: float | None = None,
        channels_last: bool = False,
        compile: bool = False,
        warmup_size: tuple[int, int] | None = None,
    ):
        """`warmup_size`: the images' (height, width), when known before the first batch: a compiled
        decoder compiles at that shape while loading (`compile_s`), not during its first batch."""
        self.batch_size = batch_size
        self.monitor_fraction = monitor_fraction
        self.image_format = image_format
        self.quality = quality
        self.save_latents = save_latents
        self.device = device or pick_device()
        self.decoder = load_decoder(decoder, model_reference, self.device, dtype)
        if tiling and not self.decoder.supports_tiling:
            raise ValueError(f"decoder_tiling: decoder {decoder!r} does not support tiled decoding")
        self.decoder.tiling = tiling
        self.backends = configure_backends(self.device)
        self.decoder.upcast_if_needed()  # before compiling: a later dtype change would recompile
        for module in self.decoder.decode_modules():
            prepare(module, channels_last=channels_last, compile=compile)
        self.compile_s = None
        if compile and warmup_size is not None:
            f = self.decoder.upscale_factor
            z = torch.zeros(batch_size or 1, self.decoder.latent_channels, warmup_size[0] // f, warmup_size[1] // f)
            self.compile_s = timed(lambda: self.decoder.decode(z))

    def __call__(self, denoised: dict) -> dict:
        latents = torch.tensor(denoised["latents"])  # a copy: arrays from the object store are read-only
        finite = torch.isfinite(latents.flatten(1)).all(dim=1)
        if not finite.all():
            bad = [key for key, ok in zip(denoised["keys"], finite.tolist()) if not ok]
            raise ValueError(f"latents of samples {bad} hold NaN or Inf (the denoiser diverged; fp16 overflow?)")
        # float in [0, 1], (B, 3, H, W), decoded `batch_size` samples at a time to bound memory.
        chunk = self.batch_size or len(latents)
        images = torch.cat([self.decoder.decode(part) for part in latents.split(chunk)])
        pixels = (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        files = [{self.image_format: encode_image(p, self.image_format, self.quality)} for p in pixels]
        if self.save_latents:
            for item, latent in zip(files, denoised["latents"]):
                item["latent.npy"] = npy_bytes(latent)
        fields = {"height": int(pixels.shape[1]), "width": int(pixels.shape[2])}
        out = {"keys": denoised["keys"], "files": files, "fields": [fields] * len(files)}
        if self.monitor_fraction:
            out["monitor"] = self.for_monitor(denoised, pixels)
        return out

    def for_monitor(self, denoised: dict, pixels: np.ndarray) -> dict:
        """The latents and pixels of the samples the quality monitor (the next stage) checks."""
        picked = [i for i, key in enumerate(denoised["keys"]) if is_monitored(key, self.monitor_fraction)]
        return {"keys": [denoised["keys"][i] for i in picked], "latents": np.asarray(denoised["latents"])[picked],
                "pixels": pixels[picked]}
