"""FLOPs of one decode, counted by torch's FlopCounterMode on the meta device.

The meta device has shapes but no data, so counting even the 1024x1024 SDXL decoder takes well
under a second and no memory. FlopCounterMode counts matmuls and convolutions (2 FLOPs per
multiply-add); elementwise ops and norms are not counted, which is the usual convention.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .base import Decoder
from .loading import build, build_model


def count_flops(decoder: str | Decoder, height: int, width: int, *, frames: int = 1, batch: int = 1) -> int:
    """FLOPs to decode `batch` images (or videos of `frames` frames) of height x width pixels."""
    if isinstance(decoder, str):
        decoder = build(decoder, device="meta")
    f = decoder.upscale_factor
    if height % f or width % f:
        raise ValueError(f"height and width must be multiples of {f}, got {height}x{width}")
    lead = (batch, frames) if decoder.is_video else (batch,)
    z = torch.zeros(*lead, decoder.latent_channels, height // f, width // f, device="meta")
    with FlopCounterMode(display=False) as counter:
        decoder.decode(z)
    return int(counter.get_total_flops())


def meta_twin(decoder: Decoder) -> Decoder:
    """The same architecture and config as `decoder` on the meta device: its FLOPs at any size
    cost no memory (a trained teacher at 1024 px would need gigabytes on the CPU)."""
    model = build_model(type(decoder.model).__name__, dict(decoder.model.config), device="meta")
    return Decoder(model.eval().requires_grad_(False), decoder.name, is_video=decoder.is_video)
