"""`kind: train-vae`'s driver: the checks before Ray (image folders readable and non-empty, every
training image holds a crop, held-out images big enough to score, LPIPS weights where the loss
needs them), then train-decoder's driver (lease, TorchTrainer, resume, "nothing to do") runs
jobs/train/vae_worker.py's loop."""

from __future__ import annotations

import posixpath

from decoders.metrics import SSIM_MIN_SIZE, LPIPSWeightsMissing, require_lpips_weights
from jobs.train.driver import run_training
from jobs.train.vae_data import check_crop, image_urls, load_images, mean_colour, trimmed
from jobs.train.vae_spec import TrainVaeSpec
from pipelines.errors import ConfigError

MODEL_CLASS = "AutoencoderKL"


def evenly_spaced(items: list, count: int) -> list:
    """At most `count` of `items`, spread over the whole (sorted) list, not its first ones."""
    if len(items) <= count:
        return list(items)
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)] if count > 1 else items[:1]


def check_before_training(spec: TrainVaeSpec) -> dict:
    """Every check that needs no worker; returns what the workers need (file lists, mean colour)."""
    d = spec.data
    train_urls = image_urls(d.train_url, d.storage, "data.train_url")
    images = load_images(train_urls, d.storage, "data.train_url")
    check_crop(images, train_urls, d.crop)
    held_urls = evenly_spaced(image_urls(d.held_out_url, d.storage, "data.held_out_url"), spec.eval_samples)
    for url, image in zip(held_urls, load_images(held_urls, d.storage, "data.held_out_url")):
        if min(trimmed(image, spec.vae.downsampling).shape[:2]) < SSIM_MIN_SIZE:
            raise ConfigError("data.held_out_url", "", detail=f"{posixpath.basename(url)} ({image.shape[1]}x"
                              f"{image.shape[0]}) is too small to score: SSIM needs {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} "
                              f"after trimming to a multiple of {spec.vae.downsampling}")
    if spec.loss.lpips_weight > 0:
        try:
            require_lpips_weights()
        except LPIPSWeightsMissing as exc:
            raise ConfigError("loss.lpips_weight", "", detail=f"> 0 needs LPIPS: {exc}") from None
    return {"train_urls": train_urls, "held_out_urls": held_urls, "mean_colour": mean_colour(images),
            "decoder": {"class": MODEL_CLASS, "config": spec.vae.config()}, "train_samples": len(train_urls),
            "held_out_samples": len(held_urls), "latent_scaling": {}}


def _vae_loop():
    from jobs.train.vae_worker import train_loop  # torch, diffusers, DDP: only in Ray Train's workers

    return train_loop


def train_vae(spec: TrainVaeSpec, *, progress=True, connect=None, wait: bool = False) -> dict:
    """Check the spec and data, then (`connect`: join a Ray cluster) train; returns the final report."""
    return run_training(spec, check_before_training, _vae_loop, progress=progress, connect=connect, wait=wait)
