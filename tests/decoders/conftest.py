import pytest
import torch

import decoders


@pytest.fixture(scope="session")
def tiny():
    """Tiny (few-channel) random-weight decoder per registered name, same classes as the real ones."""
    cache = {}

    def get(name: str, seed: int = 0) -> decoders.Decoder:
        if (name, seed) not in cache:
            cache[name, seed] = decoders.build(name, tiny=True, seed=seed, device="cpu")
        return cache[name, seed]

    return get


@pytest.fixture(scope="session")
def latents_for():
    """Random latents shaped for a decoder: (B, C, h, w), or (B, F, C, h, w) for video."""

    def make(dec, h=8, w=8, frames=3, batch=2, seed=0):
        g = torch.Generator().manual_seed(seed)
        lead = (batch, frames) if dec.is_video else (batch,)
        return torch.randn(*lead, dec.latent_channels, h, w, generator=g)

    return make
