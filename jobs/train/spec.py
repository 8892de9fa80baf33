"""The spec of `kind: train-decoder`: train a decoder on the latents of encode outputs with Ray Train."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from decoders import ARCHITECTURES
from jobs.train.checkpoint import DECODER_DIR
from pipelines.config import ModelConfig, StorageConfig, require


@dataclass(frozen=True)
class TrainData:
    # One or more latentmill outputs holding latents (kind: encode, or generate with save_latents).
    urls: list[str]
    storage: StorageConfig = field(default_factory=StorageConfig)
    # A sample is held out when a hash of (split_seed, key) falls below this fraction: fixed by the
    # spec, the same on every worker and every run.
    held_out_fraction: float = 0.1
    split_seed: int = 0
    # Random crops of this many latent cells (x8 pixels) per side; null: whole samples.
    crop: int | None = None
    # Samples each worker keeps (as their encoded bytes) to draw batches from at random: shards are
    # written in key order, and keys often group alike images (a folder sorted by name), so
    # batches read straight off the shards would each see one kind of image.
    shuffle_buffer: int = 1024

    def __post_init__(self):
        require(len(self.urls) > 0, "urls", "a non-empty list of encode output URLs", self.urls)
        require(self.shuffle_buffer >= 1, "shuffle_buffer", "a number of samples >= 1 (1: no shuffling)",
                self.shuffle_buffer)
        require(0 < self.held_out_fraction < 1, "held_out_fraction", "a fraction between 0 and 1 (exclusive)",
                self.held_out_fraction)
        if self.crop is not None:
            require(self.crop > 0, "crop", "a positive number of latent cells, or null", self.crop)


@dataclass(frozen=True)
class TrainLoss:
    pixel: Literal["l1", "mse"] = "l1"
    pixel_weight: float = 1.0
    # LPIPS (the `lpips` package, AlexNet); > 0 needs its trunk weights in $TORCH_HOME.
    lpips_weight: float = 0.0
    # Patch discriminator with hinge loss, switched on at adversarial_start_step.
    adversarial_weight: float = 0.0
    adversarial_start_step: int = 0
    discriminator_lr: float = 2e-4

    def __post_init__(self):
        for name in ("pixel_weight", "lpips_weight", "adversarial_weight"):
            require(getattr(self, name) >= 0, name, "a weight >= 0", getattr(self, name))
        require(self.pixel_weight + self.lpips_weight + self.adversarial_weight > 0, "pixel_weight",
                "at least one loss weight > 0", self.pixel_weight)
        require(self.adversarial_start_step >= 0, "adversarial_start_step", "a step >= 0", self.adversarial_start_step)


@dataclass(frozen=True)
class TrainOptim:
    steps: int = 500
    batch_size: int = 8  # per worker
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    ema_decay: float | None = None
    # auto: bf16 autocast on GPUs that support it, else fp32. bf16/fp16 need GPUs.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    def __post_init__(self):
        require(self.steps > 0, "steps", "a positive integer", self.steps)
        require(self.batch_size > 0, "batch_size", "a positive integer", self.batch_size)
        require(self.lr > 0, "lr", "a learning rate > 0", self.lr)
        require(0 <= self.warmup_steps <= self.steps, "warmup_steps", f"0 to steps ({self.steps})", self.warmup_steps)
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "a ratio from 0 to 1", self.min_lr_ratio)
        if self.grad_clip is not None:
            require(self.grad_clip > 0, "grad_clip", "a gradient norm > 0, or null", self.grad_clip)
        if self.ema_decay is not None:
            require(0 < self.ema_decay < 1, "ema_decay", "a decay between 0 and 1, or null", self.ema_decay)


@dataclass(frozen=True)
class TrainScaling:
    num_workers: int = 2
    # auto: one GPU per worker when the cluster has GPUs; otherwise CPU workers (gloo).
    use_gpu: Union[bool, Literal["auto"]] = "auto"
    cpus_per_worker: float = 1.0

    def __post_init__(self):
        require(self.num_workers > 0, "num_workers", "a positive integer", self.num_workers)
        require(self.cpus_per_worker > 0, "cpus_per_worker", "a number > 0", self.cpus_per_worker)


@dataclass(frozen=True)
class TrainCheckpoints:
    every_steps: int = 50
    keep: int = 2
    # Default: OUTPUT/checkpoints. Any fsspec URL (with output.storage).
    url: str | None = None
    # Worker-group restarts from the latest checkpoint before the run fails.
    max_failures: int = 3

    def __post_init__(self):
        require(self.every_steps > 0, "every_steps", "a positive integer", self.every_steps)
        require(self.keep > 0, "keep", "a positive integer", self.keep)
        require(self.max_failures >= 0, "max_failures", "an integer >= 0", self.max_failures)


@dataclass(frozen=True)
class TrainOutput:
    url: str
    storage: StorageConfig = field(default_factory=StorageConfig)
    lease_ttl_s: float = 60.0  # one driver per output, as for generation outputs (OutputConfig)

    def __post_init__(self):
        require(bool(self.url.strip()), "url", "an output URL or path", self.url)
        require(self.lease_ttl_s >= 1 and math.isfinite(self.lease_ttl_s), "lease_ttl_s", "a number of seconds >= 1",
                self.lease_ttl_s)


@dataclass(frozen=True)
class TrainDecoderSpec:
    name: str
    data: TrainData
    output: TrainOutput
    kind: Literal["train-decoder"] = "train-decoder"
    # A decoder architecture of decoders/ (taesd, tae-192, effvit, lean, sdxl-vae) trained from
    # scratch, or from `init_weights` (a checkpoint path or registered name of that architecture).
    architecture: str = "taesd"
    tiny: bool = False  # the architecture a few channels wide (tests)
    init_weights: str | None = None
    # From scratch: set the decoder's scaling_factor and shift_factor so the training latents reach
    # its first layer with mean 0 and std 1 (how SD chose its VAE's scaling factor). Latents of an
    # untrained VAE can be far from that (the tiny model's: std 0.02). With init_weights the
    # weights keep their own.
    normalize_latents: bool = True
    # image: reconstruct the encoded image; reference: distil the decode of the VAE that encoded the
    # data (its output's job record names it: a `train-vae` teacher, a pipeline's VAE, tiny).
    target: Literal["image", "reference"] = "image"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: TrainLoss = field(default_factory=TrainLoss)
    optim: TrainOptim = field(default_factory=TrainOptim)
    scaling: TrainScaling = field(default_factory=TrainScaling)
    checkpoints: TrainCheckpoints = field(default_factory=TrainCheckpoints)
    # Held-out samples evaluated at the end (metrics beside the decoder).
    eval_samples: int = 64
    seed: int = 0
    progress_every_s: float = 10.0

    def __post_init__(self):
        require(bool(self.name.strip()), "name", "a non-empty name", self.name)
        require(self.architecture in ARCHITECTURES, "architecture", "one of " + ", ".join(ARCHITECTURES),
                self.architecture)
        require(self.eval_samples > 0, "eval_samples", "a positive integer", self.eval_samples)

    @property
    def checkpoint_url(self) -> str:
        return self.checkpoints.url or self.output.url.rstrip("/") + "/checkpoints"

    @property
    def product_dir(self) -> str:
        """Where in the output the trained model goes (the driver's "finished?" check looks there)."""
        return DECODER_DIR

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """What decides the trained weights (resources and progress settings left out)."""
        spec = self.to_dict()
        return {k: spec[k] for k in ("data", "architecture", "tiny", "init_weights", "normalize_latents", "target",
                                     "model", "loss", "optim", "seed")}
