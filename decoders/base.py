"""`Decoder`: one calling convention around any diffusers-style latent decoder.

The wrapped model (`decoder.model`) is a plain diffusers `ModelMixin` (AutoencoderKL, AutoencoderTiny,
AutoencoderKLTemporalDecoder, or one of ours), so it can be handed to a diffusers pipeline as
`pipe.vae`. The wrapper adds what a decode stage needs and diffusers leaves to its pipelines: the
latent scaling of this model, input validation, fp16 upcasting, and one mapping to [0, 1].
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
from typing import Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)

# Written next to config.json by `save_pretrained`, so a reloaded directory keeps its registry name.
META_FILE = "latentmill_decoder.json"


class Decoder(nn.Module):
    """Latents as a diffusers pipeline returns them (`output_type="latent"`) -> pixels in [0, 1].

    Image decoders take (B, C, h, w) and return float32 (B, 3, 8h, 8w); video decoders take
    (B, F, C, h, w) and return (B, F, 3, 8h, 8w).
    """

    def __init__(self, model: nn.Module, name: str, *, is_video: bool | None = None, latent_space: str | None = None):
        super().__init__()
        self.model = model
        self.name = name
        # The latent space its weights were trained on ("sd", "sdxl", "svd"); None: unknown or random.
        self.latent_space = latent_space
        # diffusers' video VAEs (and ours) take `num_frames` in decode; image VAEs do not.
        if is_video is None:
            is_video = "num_frames" in inspect.signature(model.decode).parameters
        self.is_video = is_video
        self.latent_channels = int(model.config.latent_channels)
        self.upscale_factor = 2 ** (len(model.config.block_out_channels) - 1)
        # diffusers implements tiling for these two; attention-based / temporal decoders have none.
        self.supports_tiling = hasattr(model, "use_tiling") and hasattr(model, "tile_latent_min_size")
        self.tiling: bool | int = False

    # ---------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def config(self):
        return self.model.config

    def decode_modules(self) -> list[nn.Module]:
        """The modules `decode` runs: a VAE's decoder (+ post_quant_conv), not its encoder."""
        if not hasattr(self.model, "encoder"):
            return [self.model]
        return [m for m in (getattr(self.model, "post_quant_conv", None), self.model.decoder) if m is not None]

    def num_parameters(self) -> int:
        """Parameters used for decoding (an autoencoder's encoder is not counted)."""
        return sum(p.numel() for m in self.decode_modules() for p in m.parameters())

    # ---------------------------------------------------------------- decoding
    def check_latents(self, latents) -> torch.Tensor:
        """Return `latents` as a tensor, or raise ValueError saying what was expected and what came."""
        if not isinstance(latents, torch.Tensor):
            try:
                latents = torch.as_tensor(latents)
            except Exception as e:
                raise ValueError(f"{self.name}: expected latents as a torch.Tensor, got {type(latents).__name__}") from e
        layout = "(B, F, C, h, w)" if self.is_video else "(B, C, h, w)"
        rank = 5 if self.is_video else 4
        if latents.dim() != rank:
            raise ValueError(
                f"{self.name}: expected latents of rank {rank} {layout}, got rank {latents.dim()} "
                f"with shape {tuple(latents.shape)}"
            )
        if latents.shape[-3] != self.latent_channels:
            raise ValueError(
                f"{self.name}: expected {self.latent_channels} latent channels in {layout}, got "
                f"{latents.shape[-3]} (shape {tuple(latents.shape)}); was this latent made by another VAE?"
            )
        if min(latents.shape) == 0:
            raise ValueError(f"{self.name}: got empty latents of shape {tuple(latents.shape)}")
        if not latents.is_floating_point():
            raise ValueError(f"{self.name}: expected floating-point latents, got dtype {latents.dtype}")
        # The meta device (FLOP counting) has no values to check.
        if latents.device.type != "meta" and not torch.isfinite(latents).all():
            nan, inf = int(torch.isnan(latents).sum()), int(torch.isinf(latents).sum())
            raise ValueError(
                f"{self.name}: expected finite latents, got {nan} NaN and {inf} Inf values of "
                f"{latents.numel()} (shape {tuple(latents.shape)}); the denoiser likely diverged"
            )
        return latents

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-channel (mean, std) of models that normalise latents that way (SD3-style), else None."""
        cfg = self.model.config
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if mean is None or std is None:
            return None
        mean, std = (torch.tensor(v, device=like.device, dtype=like.dtype).view(1, -1, 1, 1) for v in (mean, std))
        return mean, std

    def to_decoder_space(self, latents: torch.Tensor) -> torch.Tensor:
        """Undo the pipeline's latent scaling exactly as diffusers' pipelines do before `vae.decode`."""
        cfg, stats = self.model.config, self._latent_stats(latents)
        if stats is not None:
            mean, std = stats
            return latents * std / cfg.scaling_factor + mean
        return latents / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)

    def to_diffusion_space(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of `to_decoder_space`: what a VAE encoder gives -> latents as pipelines use them."""
        cfg, stats = self.model.config, self._latent_stats(z)
        if stats is not None:
            mean, std = stats
            return (z - mean) * cfg.scaling_factor / std
        return (z - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor

    @property
    def can_encode(self) -> bool:
        return hasattr(self.model, "encoder") and hasattr(self.model, "encode") and not self.is_video

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1], (B, 3, H, W) -> diffusion-space latents, float32. Deterministic: a VAE's
        posterior mean, not a sample, so the same image always gives the same latents."""
        if not self.can_encode:
            raise ValueError(f"{self.name}: {type(self.model).__name__} has no image encoder")
        self.upcast_if_needed()
        with torch.inference_mode():
            x = pixels.to(device=self.device, dtype=self.dtype) * 2.0 - 1.0
            out = self.model.encode(x)
            z = out.latent_dist.mode() if hasattr(out, "latent_dist") else out.latents
            return self.to_diffusion_space(z.float())

    def upcast_if_needed(self) -> None:
        """fp16 + `force_upcast` (the SDXL/SVD VAEs overflow in fp16): run in fp32, as diffusers does.

        Diffusers upcasts around every decode and casts back; a decode stage does nothing but decode,
        so we upcast once and stay there.
        """
        if self.dtype == torch.float16 and getattr(self.model.config, "force_upcast", False):
            # The image VAE has a fine-tuned twin that stays finite in float16; the temporal one has none.
            hint = "" if self.is_video else "; decoder: sdxl-vae-fp16-fix (madebyollin/sdxl-vae-fp16-fix) decodes in float16"
            log.info("%s: force_upcast is set, running in float32 instead of float16%s", self.name, hint)
            nn.Module.to(self.model, torch.float32)

    def decode(self, latents: torch.Tensor, *, tile: bool | int | None = None,
               chunk_frames: int | None = None) -> torch.Tensor:
        """Decode diffusion-space latents to float32 pixels in [0, 1], under torch.inference_mode().

        tile: None uses `self.tiling`; True tiles with the model's default tile size; an int is the
        tile size in pixels. Only decoders with `supports_tiling` accept it.
        chunk_frames: video only, decode this many frames at a time (see `decode_chunks`).
        """
        if chunk_frames is not None:
            return torch.cat(list(self.decode_chunks(latents, chunk_frames)), dim=1)
        z = self.check_latents(latents)
        self.upcast_if_needed()  # outside inference_mode: upcast weights stay usable for training
        with torch.inference_mode():
            return self._decode(z, tile)

    @property
    def supports_chunking(self) -> bool:
        """Decodes a clip a few frames at a time with the frames of a whole-clip decode, because
        it carries what later frames need from earlier ones (causal temporal decoders)."""
        return self.is_video and getattr(self.model, "exact_frame_chunks", False)

    def decode_chunks(self, latents: torch.Tensor, chunk_frames: int) -> Iterator[torch.Tensor]:
        """Video latents (B, F, C, h, w) -> pixels in [0, 1], (B, f, 3, H, W) per chunk of f <= chunk_frames
        frames, so decode memory does not grow with clip length.

        Only decoders with `supports_chunking` take chunks shorter than the clip: others (the SVD
        VAE: its temporal convolutions see both neighbours and its GroupNorms span all frames) would
        give other frames, which is why diffusers' `decode_chunk_size` changes SVD's output.
        """
        z = self.check_latents(latents)
        if not self.is_video:
            raise ValueError(f"{self.name}: chunked decoding is for video decoders; this one decodes images")
        if chunk_frames < 1:
            raise ValueError(f"{self.name}: chunk_frames must be >= 1, got {chunk_frames}")
        frames = z.shape[1]
        if chunk_frames < frames and not self.supports_chunking:
            raise ValueError(
                f"{self.name}: {type(self.model).__name__} cannot decode a clip in chunks of frames with the same "
                f"result as all at once; decode all {frames} frames together"
            )
        self.upcast_if_needed()
        # What each chunk hands the next (decoders that chunk exactly); None for one whole-clip chunk.
        cache = {} if self.supports_chunking else None
        for start in range(0, frames, chunk_frames):
            # inference_mode per chunk, never across a yield: the caller's code runs between chunks.
            with torch.inference_mode():
                part = self._decode(z[:, start:start + chunk_frames], None, cache=cache)
            yield part

    def _decode(self, z: torch.Tensor, tile: bool | int | None, cache: dict | None = None) -> torch.Tensor:
        z = z.to(device=self.device, dtype=self.dtype)
        frames = None
        if self.is_video:
            batch, frames = z.shape[:2]
            z = z.flatten(0, 1)  # diffusers' video VAEs take frames stacked in the batch
        z = self.to_decoder_space(z)
        with self._tiling(self.tiling if tile is None else tile):
            if self.is_video:
                extra = {} if cache is None else {"cache": cache}
                x = self.model.decode(z, num_frames=frames, return_dict=False, **extra)[0]
            else:
                x = self.model.decode(z, return_dict=False)[0]
        # diffusers decoders return [-1, 1]; map to [0, 1] exactly once, then clamp once.
        x = (x.float() * 0.5 + 0.5).clamp_(0.0, 1.0)
        return x.unflatten(0, (batch, frames)) if self.is_video else x

    forward = decode

    @contextlib.contextmanager
    def _tiling(self, tile: bool | int):
        if not tile:
            yield
            return
        if not self.supports_tiling:
            raise ValueError(f"{self.name}: tiled decoding is not supported by {type(self.model).__name__}")
        m = self.model
        saved = (m.use_tiling, m.tile_sample_min_size, m.tile_latent_min_size)
        m.use_tiling = True
        if not isinstance(tile, bool):
            if tile % self.upscale_factor or tile <= 0:
                raise ValueError(f"{self.name}: tile size must be a positive multiple of {self.upscale_factor}, got {tile}")
            m.tile_sample_min_size, m.tile_latent_min_size = tile, tile // self.upscale_factor
        try:
            yield
        finally:
            m.use_tiling, m.tile_sample_min_size, m.tile_latent_min_size = saved

    # ---------------------------------------------------------------- saving
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """diffusers layout (config.json + diffusion_pytorch_model.safetensors) plus our name."""
        self.model.save_pretrained(directory, safe_serialization=True)
        with open(os.path.join(directory, META_FILE), "w") as f:
            meta = {"name": self.name, "is_video": self.is_video, "latent_space": self.latent_space, "format": 1}
            json.dump(meta, f, indent=2)

    def save_file(self, path: str | os.PathLike) -> None:
        """One self-contained .safetensors file: weights plus config and name in its header."""
        # lazy: keeps safetensors out of processes that never call this
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        meta = {"config": self.model.to_json_string(), "name": self.name, "latent_space": self.latent_space or "",
                "format": "1"}
        save_file(state, os.fspath(path), metadata=meta)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, latent_channels={self.latent_channels}, "
            f"upscale_factor={self.upscale_factor}, is_video={self.is_video}, latent_space={self.latent_space!r}"
        )
