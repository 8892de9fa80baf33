"""Latent decoders for latentmill's decode stage.

    import decoders
    dec = decoders.load("taesdxl")                     # published weights, through the Hugging Face cache
    dec = decoders.load("random:taesd")                # the architecture with random weights (noise)
    images = dec.decode(latents)                       # pipeline latents -> float32 [0, 1]
    pipe.vae = dec.model                               # drop-in where diffusers allows

Imports nothing from `pipelines` or `jobs` (imports go jobs -> pipelines -> decoders). The names,
references and latent-space checks import no torch, so spec checks stay light; the models load on
first use of `load`, `build` or `Decoder`.
"""

import importlib

from .registry import (
    ARCHITECTURES,
    LATENT_SPACES,
    PUBLISHED,
    LatentSpaceMismatch,
    available,
    check_latent_space,
    fetch_weights,
    lookup,
)
from .weights import WeightsUnavailable

_LAZY = {
    "Decoder": "base",
    "load": "loading",
    "build": "loading",
    "CheckpointMismatchError": "checkpoints",
    "UnsafeCheckpointError": "checkpoints",
}

__all__ = [
    *_LAZY, "available", "lookup", "fetch_weights", "check_latent_space", "ARCHITECTURES", "PUBLISHED",
    "LATENT_SPACES", "LatentSpaceMismatch", "WeightsUnavailable",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
