"""Latent decoders for latentmill's decode stage.

    import decoders
    dec = decoders.load("taesd")                       # or a save_pretrained dir, a .safetensors, a hub id
    images = dec.decode(latents)                       # pipeline latents -> float32 [0, 1]
    pipe.vae = dec.model                               # drop-in where diffusers allows

Imports nothing from `pipelines` or `jobs` (imports go jobs -> pipelines -> decoders).
"""

from .base import Decoder
from .checkpoints import CheckpointMismatchError, UnsafeCheckpointError
from .registry import SPECS, available, build, load

__all__ = ["Decoder", "load", "build", "available", "SPECS", "CheckpointMismatchError", "UnsafeCheckpointError"]
