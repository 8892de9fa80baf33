"""The spec of `kind: train-vae`: train a teacher autoencoder (diffusers AutoencoderKL with SDXL's
block types, reduced width) on random crops of a folder of photos, with Ray Train.

Optimiser, scaling, checkpoints and output are train-decoder's (jobs/train/spec.py): the same
driver, checkpoints and report serve both kinds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from jobs.train.spec import TrainCheckpoints, TrainOptim, TrainOutput, TrainScaling
from pipelines.config import StorageConfig, require

VAE_DIR = "vae"  # OUTPUT/vae: the trained AutoencoderKL, a save_pretrained directory


@dataclass(frozen=True)
class VaeImages:
    # Folders (any fsspec URL) of images, e.g. PNG crops that `python -m jobs.train.sample_photos`
    # writes. held_out_url must hold OTHER photos than train_url (not crops of the same ones): its images
    # are evaluated whole (trimmed to a multiple of the VAE's downsampling) at the end.
    train_url: str
    held_out_url: str
    storage: StorageConfig = field(default_factory=StorageConfig)
    crop: int = 64  # random crops of this many pixels per side; a multiple of the VAE's downsampling
    flips: bool = True  # random horizontal flips

    def __post_init__(self):
        require(bool(self.train_url.strip()), "train_url", "a folder URL of training images", self.train_url)
        require(bool(self.held_out_url.strip()), "held_out_url", "a folder URL of held-out images", self.held_out_url)
        require(self.train_url.rstrip("/") != self.held_out_url.rstrip("/"), "held_out_url",
                "a folder of other photos than data.train_url", self.held_out_url)
        require(self.crop >= 16, "crop", "a crop size in pixels >= 16 (SSIM needs 11)", self.crop)


@dataclass(frozen=True)
class VaeArchitecture:
    """SDXL's VAE (DownEncoderBlock2D/UpDecoderBlock2D, a mid-block with attention, SiLU) at a width
    of its own; 2 ** (len(block_out_channels) - 1) downsampling (4 blocks: 8x, as SDXL)."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])
    layers_per_block: int = 1
    norm_num_groups: int = 16
    latent_channels: int = 4

    def __post_init__(self):
        channels = self.block_out_channels
        require(len(channels) >= 1 and all(isinstance(c, int) and c > 0 for c in channels), "block_out_channels",
                "a list of positive channel counts", channels)
        require(self.norm_num_groups > 0 and all(c % self.norm_num_groups == 0 for c in channels), "norm_num_groups",
                f"a group count dividing every block's channels ({channels})", self.norm_num_groups)
        require(self.layers_per_block > 0, "layers_per_block", "a positive integer", self.layers_per_block)
        require(self.latent_channels > 0, "latent_channels", "a positive integer", self.latent_channels)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def config(self) -> dict[str, Any]:
        """AutoencoderKL's constructor arguments."""
        n = len(self.block_out_channels)
        return {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * n,
                "up_block_types": ["UpDecoderBlock2D"] * n, "block_out_channels": list(self.block_out_channels),
                "layers_per_block": self.layers_per_block, "act_fn": "silu", "latent_channels": self.latent_channels,
                "norm_num_groups": self.norm_num_groups, "force_upcast": False}


@dataclass(frozen=True)
class VaeLoss:
    pixel: Literal["l1", "mse"] = "mse"  # mse: PSNR is the metric
    pixel_weight: float = 1.0
    # The posterior's KL to N(0, 1), summed over latent elements and divided by the image's pixel
    # values (3 H W): relative to a per-pixel mean loss, as SD's 1e-6 is relative to per-image sums.
    kl_weight: float = 1e-6
    lpips_weight: float = 0.0  # > 0 needs LPIPS's AlexNet weights in $TORCH_HOME (refused otherwise)

    def __post_init__(self):
        for name in ("pixel_weight", "kl_weight", "lpips_weight"):
            require(getattr(self, name) >= 0, name, "a weight >= 0", getattr(self, name))
        require(self.pixel_weight + self.lpips_weight > 0, "pixel_weight", "a reconstruction weight > 0 (pixel or "
                "lpips)", self.pixel_weight)


@dataclass(frozen=True)
class TrainVaeSpec:
    name: str
    data: VaeImages
    output: TrainOutput
    kind: Literal["train-vae"] = "train-vae"
    vae: VaeArchitecture = field(default_factory=VaeArchitecture)
    loss: VaeLoss = field(default_factory=VaeLoss)
    optim: TrainOptim = field(default_factory=TrainOptim)
    scaling: TrainScaling = field(default_factory=TrainScaling)
    checkpoints: TrainCheckpoints = field(default_factory=TrainCheckpoints)
    eval_samples: int = 64  # held-out images evaluated at the end (metrics.json beside the VAE)
    # Random training crops encoded at the end to set scaling_factor / shift_factor (mean 0, std 1).
    scaling_samples: int = 256
    seed: int = 0
    progress_every_s: float = 10.0

    def __post_init__(self):
        require(bool(self.name.strip()), "name", "a non-empty name", self.name)
        require(self.eval_samples > 0, "eval_samples", "a positive integer", self.eval_samples)
        require(self.scaling_samples > 1, "scaling_samples", "an integer > 1", self.scaling_samples)
        factor = self.vae.downsampling
        require(self.data.crop % factor == 0, "data.crop", f"a multiple of {factor} (the VAE's downsampling)",
                self.data.crop)

    # What the shared driver and report ask of a training spec.
    architecture = "autoencoder-kl"
    target = "image"
    product_dir = VAE_DIR

    @property
    def checkpoint_url(self) -> str:
        return self.checkpoints.url or self.output.url.rstrip("/") + "/checkpoints"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """What decides the trained weights (resources and progress settings left out)."""
        spec = self.to_dict()
        return {k: spec[k] for k in ("data", "vae", "loss", "optim", "scaling_samples", "seed")}
