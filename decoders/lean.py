"""LeanDecoder: a TAESD-style decoder with no convolution at full resolution.

TAESD spends most of its FLOPs on the last stage, 64-channel 3x3 convolutions over every output
pixel. This decoder stops one resolution earlier: its last convolution predicts each 2x2 pixel
block as 12 channels at half resolution and a pixel shuffle lays them out, so the widest stages
run where pixels are few. At 1024x1024 it needs 95 GFLOP, a sixth of TAESD's 565, 1/110
of the SDXL VAE decoder (`latentmill bench decoders` counts them; tests/test_eval_metrics.py checks
the bound). No published weights: train it with `kind: train-decoder`.

Like TAESD it takes diffusion-space latents at scale 1.0 and returns [-1, 1] (diffusers' convention).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def conv(c_in: int, c_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, **kwargs)


class ResidualBlock(nn.Module):
    """TAESD's block: three 3x3 convolutions with a skip, ReLU after the sum."""

    def __init__(self, channels: int):
        super().__init__()
        self.convs = nn.Sequential(conv(channels, channels), nn.ReLU(), conv(channels, channels), nn.ReLU(),
                                   conv(channels, channels))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + x)


class LeanDecoder(ModelMixin, ConfigMixin):
    """Resolutions are listed from full (index 0) to latent (last), as in diffusers' configs.

    block_out_channels[0] is the output (RGB, made by the pixel shuffle); each later entry is the
    width of the stage at 1/2, 1/4, 1/8 resolution with layers_per_block[i] residual blocks.
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (3, 48, 64, 64),
        layers_per_block: tuple[int, ...] = (0, 1, 2, 3),
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        force_upcast: bool = False,
    ):
        super().__init__()
        n = len(block_out_channels)
        if n < 2 or len(layers_per_block) != n:
            raise ValueError("block_out_channels and layers_per_block need one entry per resolution (at least 2)")
        if layers_per_block[0] != 0:
            raise ValueError("layers_per_block[0] must be 0: a LeanDecoder has no blocks at full resolution")
        widths = block_out_channels
        layers: list[nn.Module] = [conv(latent_channels, widths[-1]), nn.ReLU()]
        for i in reversed(range(1, n)):  # latent resolution first
            layers += [ResidualBlock(widths[i]) for _ in range(layers_per_block[i])]
            if i > 1:
                layers += [nn.Upsample(scale_factor=2), conv(widths[i], widths[i - 1], bias=False)]
        layers += [conv(widths[1], widths[0] * 4), nn.PixelShuffle(2)]
        self.layers = nn.Sequential(*layers)

    def decode(self, z: torch.Tensor, return_dict: bool = True, **kwargs) -> DecoderOutput | tuple[torch.Tensor]:
        """Same signature as AutoencoderKL.decode, so a pipeline can use this as its `vae`."""
        # TAESD's soft clamp keeps outlying latents from blowing up the first layers.
        x = self.layers(torch.tanh(z / 3) * 3)
        sample = x * 2 - 1  # the layers learn [0, 1]; diffusers decoders return [-1, 1]
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        return self.decode(sample, return_dict=return_dict)
