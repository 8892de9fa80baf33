"""LinearDecoder: the least-squares baseline, one affine map from a latent cell to its 8x8 pixels.

Every latent cell's C values map to the 3 x 8 x 8 pixels above it by the same affine map (a 1x1
convolution to 192 channels and a pixel shuffle). `fit` solves for it in closed form on training
latents and images, so a trained decoder has a fair floor to beat: whatever it gains over this
comes from spatial context and non-linearity.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class LinearDecoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, latent_channels: int = 4, block_out_channels: tuple[int, ...] = (3, 3, 3, 3),
                 scaling_factor: float = 1.0, shift_factor: float = 0.0, force_upcast: bool = False):
        # block_out_channels only states the upscale factor (2 ** (len - 1)), as in diffusers' VAEs.
        super().__init__()
        self.upscale = 2 ** (len(block_out_channels) - 1)
        self.proj = nn.Conv2d(latent_channels, 3 * self.upscale**2, 1)
        self.shuffle = nn.PixelShuffle(self.upscale)

    def decode(self, z: torch.Tensor, return_dict: bool = True, **kwargs):
        sample = self.shuffle(self.proj(z))
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        return self.decode(sample, return_dict=return_dict)

    @torch.no_grad()
    def fit(self, latents: torch.Tensor, images: torch.Tensor, ridge: float = 1e-6) -> None:
        """Least squares from latents (N, C, h, w) to images in [0, 1] (N, 3, 8h, 8w)."""
        f = self.upscale
        x = latents.double().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        # The pixels of each cell in pixel-shuffle order: channel-major, then row, then column.
        y = nn.functional.pixel_unshuffle(images.double() * 2 - 1, f).permute(0, 2, 3, 1).reshape(len(x), -1)
        gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype)
        solution = torch.linalg.solve(gram, x.T @ y)  # (C + 1, 3 f f)
        self.proj.weight.copy_(solution[:-1].T.reshape(self.proj.weight.shape).float())
        self.proj.bias.copy_(solution[-1].float())
