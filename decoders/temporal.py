"""TAE-style video decoder: a TAESD decoder whose stages also mix information across frames.

Decoding each frame alone flickers, because nothing ties frame t to frame t-1. Here each stage
starts with a `TemporalMix` block: frame t's features are fused with frame t-1's (causal: a frame
never depends on later ones), in the spirit of TAESDV/taehv. Frames travel
stacked in the batch, (B*F, C, h, w), as in diffusers' video VAEs; `num_frames` says how to split.

Takes diffusion-space latents at scale 1.0 (TAESD convention) and returns [-1, 1].

Being causal, it decodes a clip in chunks of frames with the same result as all at once: `cache`
carries each TemporalMix's last input frame from one chunk to the next, so memory does not grow with
clip length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Block(nn.Module):
    """TAESD's residual block: three 3x3 convs, ReLU after the sum."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Sequential(conv(ch, ch), nn.ReLU(), conv(ch, ch), nn.ReLU(), conv(ch, ch))
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.fuse(self.conv(x) + x)


class TemporalMix(nn.Module):
    """x_t <- relu(x_t + f([x_t, x_{t-1}])): each frame sees the previous one (zeros before frame 0)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Sequential(conv(2 * ch, ch), nn.ReLU(), conv(ch, ch))
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor, num_frames: int, cache: dict | None = None) -> torch.Tensor:
        """`cache`: when decoding a clip chunk by chunk, holds the previous chunk's last frame."""
        bf, c, h, w = x.shape
        video = x.view(bf // num_frames, num_frames, c, h, w)
        before = cache.get(self) if cache is not None else None
        first = torch.zeros_like(video[:, :1]) if before is None else before.unsqueeze(1)
        past = torch.cat([first, video[:, :-1]], dim=1)  # shift frames by one
        if cache is not None:
            cache[self] = video[:, -1]
        return self.fuse(x + self.conv(torch.cat([x, past.reshape(bf, c, h, w)], dim=1)))


class Upsample(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = conv(n_in, n_out, bias=False)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TemporalTinyDecoder(ModelMixin, ConfigMixin):
    """Stages from latent resolution up; `temporal_stages[i]` puts a TemporalMix at the start of stage i."""

    # Chunked decoding (with `cache`) gives the frames of a whole-clip decode.
    exact_frame_chunks = True

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
        num_blocks: tuple[int, ...] = (3, 3, 3, 1),
        temporal_stages: tuple[bool, ...] = (True, True, True, False),
        latent_magnitude: float = 3.0,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        force_upcast: bool = False,
    ):
        super().__init__()
        if not (len(block_out_channels) == len(num_blocks) == len(temporal_stages)):
            raise ValueError("block_out_channels, num_blocks and temporal_stages need one entry per stage")
        if not any(temporal_stages):
            raise ValueError("a temporal decoder needs at least one temporal stage")
        chs = block_out_channels
        self.conv_in = conv(latent_channels, chs[0])
        layers: list[nn.Module] = []
        for i, (ch, n) in enumerate(zip(chs, num_blocks)):
            if temporal_stages[i]:
                layers.append(TemporalMix(ch))
            layers += [Block(ch) for _ in range(n)]
            if i + 1 < len(chs):
                layers.append(Upsample(ch, chs[i + 1]))
        self.layers = nn.ModuleList(layers)
        self.conv_out = conv(chs[-1], out_channels)

    def decode(self, z: torch.Tensor, num_frames: int | None = None, return_dict: bool = True,
               cache: dict | None = None, **kwargs):
        """(B*F, C, h, w) -> (B*F, 3, 8h, 8w) in [-1, 1]; num_frames=None means one video of z.shape[0] frames.

        cache: an empty dict before a clip's first chunk, then the same dict for each next chunk.
        """
        num_frames = num_frames or z.shape[0]
        if z.shape[0] % num_frames:
            raise ValueError(f"batch of {z.shape[0]} frames is not a multiple of num_frames={num_frames}")
        m = self.config.latent_magnitude
        x = torch.relu(self.conv_in(torch.tanh(z / m) * m))  # soft-clamp outliers, as TAESD does
        for layer in self.layers:
            x = layer(x, num_frames, cache) if isinstance(layer, TemporalMix) else layer(x, num_frames)
        sample = self.conv_out(x).mul(2).sub(1)  # trained for [0, 1]; diffusers' convention is [-1, 1]
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor, num_frames: int | None = None, return_dict: bool = True):
        return self.decode(sample, num_frames=num_frames, return_dict=return_dict)
