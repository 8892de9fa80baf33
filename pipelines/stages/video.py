"""Video stages: conditioning images -> Stable Video Diffusion latents, and latents -> frames -> mp4.

The denoise stage runs StableVideoDiffusionPipeline's image encoder, VAE encoder (for the
conditioning latents), UNet and scheduler with `output_type="latent"`; decoding is the decode
stage's, on its own actors, with the model's temporal VAE or a light temporal decoder, a chunk of
frames at a time so that decode memory does not grow with clip length.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from pipelines.config import MODEL_VIDEO_VAE, VideoConfig, VideoModelConfig, VideoOutputConfig
from pipelines.models.decoding import load_decoder
from pipelines.models.loading import ensure_tiny_svd, load_model_vae, load_video_pipeline
from pipelines.sinks.video import CODEC, PIXEL_FORMAT, encode_mp4
from pipelines.stages.decode import encode_image, npy_bytes
from pipelines.stages.device import pick_device
from pipelines.stages.gpu_settings import configure_backends, prepare


class VideoDenoise:
    def __init__(self, model: VideoModelConfig, video: VideoConfig, batch_size: int | None = None,
                 device: str | None = None):
        self.video, self.batch_size = video, batch_size
        self.device = device or pick_device()
        self.pipe = load_video_pipeline(model.reference, model.dtype, self.device).to(self.device)
        # Only the VAE's encoder is used here; without its decoder nothing can decode by accident.
        self.pipe.vae.decoder = None
        configure_backends(self.device)
        # No warm-up: a video job's first batch carries the compile (the clip batch varies less).
        prepare(self.pipe.unet, channels_last=model.channels_last, compile=model.compile)

    def __call__(self, batch: dict) -> dict:
        """`batch`: keys, samples (with their seeds) and uint8 conditioning pixels (B, H, W, 3).
        Returns the keys, samples and float32 latents (B, F, C, h, w)."""
        v = self.video
        samples, pixels = batch["samples"], batch["pixels"]
        parts = []
        chunk = self.batch_size or max(len(samples), 1)
        for start in range(0, len(samples), chunk):
            part = samples[start:start + chunk]
            # One CPU generator per clip: its noise depends on its seed alone, not on its batch.
            generators = [torch.Generator("cpu").manual_seed(s["seed"]) for s in part]
            frames = self.pipe(
                image=[Image.fromarray(p) for p in pixels[start:start + chunk]],
                height=v.height, width=v.width, num_frames=v.frames, num_inference_steps=v.steps,
                min_guidance_scale=v.min_guidance_scale, max_guidance_scale=v.max_guidance_scale, fps=v.fps,
                motion_bucket_id=v.motion_bucket_id, noise_aug_strength=v.noise_aug_strength,
                generator=generators, output_type="latent",
            ).frames
            parts.append(frames.float().cpu().numpy())
        channels = self.pipe.unet.config.out_channels
        factor = self.pipe.vae_scale_factor
        empty = np.zeros((0, v.frames, channels, v.height // factor, v.width // factor), np.float32)
        return {"keys": list(batch["keys"]), "samples": samples,
                "latents": np.concatenate(parts).astype(np.float32, copy=False) if parts else empty}


def load_video_decoder(decoder: str, model_reference: str, device: str, dtype: str):
    """`svd-vae` means the model's own temporal VAE; anything else goes to `decoders.load`."""
    if decoder == MODEL_VIDEO_VAE:
        return load_model_vae(model_reference, device, dtype, tiny=ensure_tiny_svd)
    return load_decoder(decoder, model_reference, device, dtype)


class VideoDecode:
    def __init__(self, decoder: str, model_reference: str, video: VideoConfig, output: VideoOutputConfig,
                 dtype: str = "float32", batch_size: int | None = None, device: str | None = None,
                 channels_last: bool = False, compile: bool = False):
        self.video, self.output, self.batch_size = video, output, batch_size
        self.device = device or pick_device()
        self.decoder = load_video_decoder(decoder, model_reference, self.device, dtype)
        configure_backends(self.device)
        self.decoder.upcast_if_needed()  # before compiling: a later dtype change would recompile
        for module in self.decoder.decode_modules():
            prepare(module, channels_last=channels_last, compile=compile)
        if not self.decoder.is_video:
            raise ValueError(f"decoder: {decoder!r} decodes images; a video job needs a video decoder "
                             f"({MODEL_VIDEO_VAE}, random:tae-temporal or a checkpoint of one)")
        chunk = video.decode_chunk_size
        if chunk is not None and chunk < video.frames and not self.decoder.supports_chunking:
            raise ValueError(f"video.decode_chunk_size: decoder {decoder!r} cannot decode clips in chunks of "
                             f"frames; leave it null (whole clips)")
        self.chunk_frames = chunk or video.frames
        self.fields = {"frames": video.frames, "fps": video.fps, "duration": video.frames / video.fps,
                       "codec": CODEC, "pix_fmt": PIXEL_FORMAT, "crf": output.crf}

    def frames(self, latents: torch.Tensor) -> np.ndarray:
        """Clips' latents (B, F, C, h, w) -> uint8 frames (B, F, H, W, 3), decoded chunk by chunk."""
        parts = [(x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
                 for x in self.decoder.decode_chunks(latents, self.chunk_frames)]
        return np.concatenate(parts, axis=1)

    def __call__(self, denoised: dict) -> dict:
        keys, latents = denoised["keys"], denoised["latents"]
        if not len(keys):
            return {"keys": [], "files": [], "fields": []}
        z = torch.tensor(latents)  # a copy: arrays from the object store are read-only
        finite = torch.isfinite(z.flatten(1)).all(dim=1)
        if not finite.all():
            bad = [key for key, ok in zip(keys, finite.tolist()) if not ok]
            raise ValueError(f"latents of clips {bad} hold NaN or Inf (the denoiser diverged; fp16 overflow?)")
        chunk = self.batch_size or len(keys)
        files, fields = [], []
        for start in range(0, len(keys), chunk):
            for offset, clip in enumerate(self.frames(z[start:start + chunk])):
                key = keys[start + offset]
                item = {"mp4": encode_mp4(clip, self.video.fps, self.output.crf, self.output.preset)}
                if self.output.poster:
                    item["poster.png"] = encode_image(clip[0], "png", 95)
                if self.output.save_latents:
                    item["latent.npy"] = npy_bytes(latents[start + offset])
                files.append(item)
                fields.append({**self.fields, "height": int(clip.shape[1]), "width": int(clip.shape[2]),
                               "conditioning_key": key})
        return {"keys": list(keys), "files": files, "fields": fields}
