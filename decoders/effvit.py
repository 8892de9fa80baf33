"""EfficientViT-style decoder for 4-channel, 8x-downsampled latents (SDXL latent space).

Attention where it is cheap, convolutions where pixels are many: the two low-resolution stages
use EfficientViT blocks (multi-scale ReLU linear attention, whose cost grows linearly with the
number of pixels, followed by a GLU MBConv), the two high-resolution stages use plain residual
conv blocks. Upsampling is a conv + pixel shuffle with a channel-repeat shortcut (DC-AE style).
The blocks are diffusers' own (from AutoencoderDC), so weights and behaviour match upstream.

Unlike the reference repository of arXiv 2503.04871, whose EfficientViT stages have depth 0 (no
attention at all), the config is checked: a decoder without an attention block is refused.

Like TAESD it takes diffusion-space latents at scale 1.0 and returns [-1, 1] (diffusers' convention).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_dc import DCUpBlock2d, EfficientViTBlock, ResBlock
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import RMSNorm
from torch import nn

BLOCK_TYPES = ("ResBlock", "EfficientViTBlock")


class EfficientViTDecoder(ModelMixin, ConfigMixin):
    """Stages are listed from full resolution (index 0) to latent resolution (last), as in diffusers."""

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (64, 128, 256, 256),
        layers_per_block: tuple[int, ...] = (1, 2, 2, 3),
        block_types: tuple[str, ...] = ("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        attention_head_dim: int = 32,
        qkv_multiscales: tuple[int, ...] = (5,),
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        force_upcast: bool = False,
    ):
        super().__init__()
        n = len(block_out_channels)
        if not (len(layers_per_block) == len(block_types) == n):
            raise ValueError("block_out_channels, layers_per_block and block_types need one entry per stage")
        if any(t not in BLOCK_TYPES for t in block_types):
            raise ValueError(f"block_types must be from {BLOCK_TYPES}, got {block_types}")
        if not any(t == "EfficientViTBlock" and d > 0 for t, d in zip(block_types, layers_per_block)):
            raise ValueError("an EfficientViT decoder needs at least one EfficientViTBlock stage with depth > 0")

        self.conv_in = nn.Conv2d(latent_channels, block_out_channels[-1], 3, padding=1)
        stages = []
        for i in reversed(range(n)):  # latent resolution first
            ch = block_out_channels[i]
            blocks = [self._block(block_types[i], ch) for _ in range(layers_per_block[i])]
            if i > 0:  # 2x up to the next (wider-resolution) stage
                blocks.append(DCUpBlock2d(ch, block_out_channels[i - 1], interpolate=False, shortcut=True))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.norm_out = RMSNorm(block_out_channels[0], 1e-5, elementwise_affine=True, bias=True)
        self.act_out = nn.ReLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def _block(self, kind: str, ch: int) -> nn.Module:
        if kind == "EfficientViTBlock":
            return EfficientViTBlock(
                ch, attention_head_dim=self.config.attention_head_dim,
                qkv_multiscales=tuple(self.config.qkv_multiscales), norm_type="rms_norm",
            )
        return ResBlock(ch, ch, norm_type="rms_norm", act_fn="silu")

    def forward_latents(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for stage in self.stages:
            x = stage(x)
        x = self.norm_out(x.movedim(1, -1)).movedim(-1, 1)  # RMSNorm over channels
        return self.conv_out(self.act_out(x))

    def decode(self, z: torch.Tensor, return_dict: bool = True, **kwargs) -> DecoderOutput | tuple[torch.Tensor]:
        """Same signature as AutoencoderKL.decode, so a pipeline can use this as its `vae`."""
        sample = self.forward_latents(z)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        return self.decode(sample, return_dict=return_dict)
