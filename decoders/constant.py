"""ConstantDecoder: every latent decodes to one colour, whatever its values (a baseline, not a decoder).

`latentmill eval --baseline grey` (0.5) and `--baseline mean-colour` (the training images' mean)
score it like any decoder, so a trained decoder's margin over "knows nothing of the latents" is in
the same table. A decoder that recovers image content must beat it clearly: the mean colour is the
best a constant can do in squared error on the training images.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class ConstantDecoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, latent_channels: int = 4, block_out_channels: tuple[int, ...] = (3, 3, 3, 3),
                 colour: tuple[float, float, float] = (0.5, 0.5, 0.5), scaling_factor: float = 1.0,
                 shift_factor: float = 0.0, force_upcast: bool = False):
        # block_out_channels only states the upscale factor (2 ** (len - 1)), as in diffusers' VAEs.
        super().__init__()
        if len(colour) != 3 or not all(0.0 <= c <= 1.0 for c in colour):
            raise ValueError(f"colour must be 3 values in [0, 1] (R, G, B), got {colour}")
        self.upscale = 2 ** (len(block_out_channels) - 1)
        # A parameter, not a buffer: Decoder reads the device and dtype from the parameters.
        self.rgb = nn.Parameter(torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1))

    def decode(self, z: torch.Tensor, return_dict: bool = True, **kwargs):
        b, _, h, w = z.shape
        sample = (self.rgb * 2 - 1).to(z.dtype).expand(b, 3, h * self.upscale, w * self.upscale)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        return self.decode(sample, return_dict=return_dict)
