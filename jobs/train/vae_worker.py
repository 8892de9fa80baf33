"""What each Ray Train worker runs for `kind: train-vae` (driver: jobs/train/vae_driver.py).

The steps, checkpoints, resume and progress are train-decoder's (jobs/train/worker.py,
decoders/training.py); this module adds the autoencoder (`VaeNet`: images -> reconstruction + KL),
its batches of random crops, and the end: the latent scaling measured on training crops, held-out
metrics beside the mean-colour baseline's, OUTPUT/vae/ and the report.
"""

from __future__ import annotations

import json
import os
import posixpath

import numpy as np
import torch
import yaml
from torch import nn

from decoders.base import Decoder
from decoders.metrics import LPIPS, LPIPSWeightsMissing, lpips_status, score
from decoders.training import DecoderTrainer, TrainSettings, unwrap
from jobs.schema import build as build_spec
from jobs.train.checkpoint import temporary_dir, write_tree
from jobs.train.progress import tell
from jobs.train.report import write_report
from jobs.train.vae_data import batch_at, load_images, random_crops, trimmed
from jobs.train.vae_spec import TrainVaeSpec
from jobs.train.worker import device_for, precision_for, restore, run_steps
from pipelines.worker_setup import collector_paused

SCALING_SEED_OFFSET = 1 << 30  # the scaling crops' generator: apart from every training step's


class VaeNet(nn.Module):
    """[0, 1] images -> ([0, 1] reconstruction from a posterior sample, KL per pixel value).

    The posterior's noise comes from a generator reseeded every step (`reseed`), so a resumed run
    draws the noise an uninterrupted one draws.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.generator = torch.Generator()

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.model.encode(images * 2 - 1).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=self.generator).to(posterior.mean)
        z = posterior.mean + posterior.std * noise
        reconstruction = self.model.decode(z).sample * 0.5 + 0.5
        return reconstruction, posterior.kl().mean() / images[0].numel()


def build_vae(spec: TrainVaeSpec) -> nn.Module:
    with collector_paused():  # the first diffusers import (see collector_paused)
        # lazy: keeps diffusers out of the driver, which imports this module's spec only
        from diffusers import AutoencoderKL

        torch.manual_seed(spec.seed)  # DDP broadcasts rank 0's weights; every rank starts alike anyway
        return AutoencoderKL(**spec.vae.config())


def _settings(spec: TrainVaeSpec, device) -> TrainSettings:
    o, loss = spec.optim, spec.loss
    return TrainSettings(
        steps=o.steps, lr=o.lr, weight_decay=o.weight_decay, warmup_steps=o.warmup_steps, min_lr_ratio=o.min_lr_ratio,
        grad_clip=o.grad_clip, pixel_loss=loss.pixel, pixel_weight=loss.pixel_weight, lpips_weight=loss.lpips_weight,
        kl_weight=loss.kl_weight, ema_decay=o.ema_decay, precision=precision_for(spec, device))


def as_tensor(batch: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float [0, 1] (B, 3, H, W)."""
    return torch.tensor(batch).permute(0, 3, 1, 2).float() / 255.0  # a copy: loaded pixels are read-only


def train_loop(config: dict) -> None:
    # lazy: keeps ray out of processes that never call this
    import ray.train
    import ray.train.torch

    spec = build_spec(TrainVaeSpec, config["spec"])
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(max(1, int(spec.scaling.cpus_per_worker)))
    device = device_for(config["use_gpu"])
    net = ray.train.torch.prepare_model(VaeNet(build_vae(spec)), move_to_device=device)
    lpips = LPIPS().to(device) if spec.loss.lpips_weight > 0 else None
    trainer = DecoderTrainer(net, _settings(spec, device), lpips=lpips, device=device)
    history: list[dict] = []
    resumed_from = restore(trainer, history, config["prepared"]["decoder"])
    images = load_images(config["prepared"]["train_urls"], spec.data.storage, "data.train_url")
    d = spec.data

    def next_batch(step: int):
        unwrap(trainer.net).reseed(int(np.random.SeedSequence([spec.seed, step, rank]).generate_state(1)[0]))
        x = as_tensor(batch_at(images, step, rank, spec.seed, spec.optim.batch_size, d.crop, d.flips))
        return x, x

    run_steps(trainer, next_batch, spec, config, history)
    if rank == 0:
        tell(config.get("progress_queue"), {"kind": "evaluating", "samples": len(config["prepared"]["held_out_urls"])})
        _finish(spec, config, trainer, images, history, resumed_from, device)


def measure_scaling(vae: Decoder, images: list[np.ndarray], spec: TrainVaeSpec) -> dict:
    """scaling_factor and shift_factor that bring the posterior means of `spec.scaling_samples`
    random training crops to mean 0, std 1 (SD chose its factor so), set in the VAE's config."""
    rng = np.random.default_rng([spec.seed, SCALING_SEED_OFFSET])
    crops = random_crops(images, spec.scaling_samples, spec.data.crop, spec.data.flips, rng)
    vae.model.register_to_config(scaling_factor=1.0, shift_factor=0.0)
    z = torch.cat([vae.encode(as_tensor(part)) for part in np.array_split(crops, max(1, len(crops) // 32))])
    mean, std = float(z.double().mean()), float(z.double().std())
    scaling = {"scaling_factor": 1.0 / std, "shift_factor": mean}
    vae.model.register_to_config(**scaling)
    return scaling


def held_out_metrics(vae: Decoder, held_out: list[np.ndarray], colour: list[float], lpips) -> dict:
    """PSNR/SSIM (LPIPS) of the VAE's reconstruction (posterior mean, as `kind: encode` takes) of each
    held-out image, and of the training images' mean colour as a constant image, on the same images."""
    scores: dict[str, list] = {}
    baseline: dict[str, list] = {}
    constant = torch.tensor(colour, dtype=torch.float64).view(1, 3, 1, 1)
    for image in held_out:
        x = as_tensor(image[None])
        for name, values in score(x.double(), vae.decode(vae.encode(x)).cpu().double(), lpips).items():
            scores.setdefault(name, []).extend(values)
        for name, values in score(x.double(), constant.expand_as(x)).items():
            baseline.setdefault(name, []).extend(values)
    mean = {name: sum(v) / len(v) for name, v in scores.items()}
    base = {name: sum(v) / len(v) for name, v in baseline.items()}
    return {"held_out_samples": len(held_out), "against": "original images", **mean,
            "mean_colour_baseline": {"colour": [round(c, 4) for c in colour], **base},
            "psnr_over_mean_colour_db": mean["psnr"] - base["psnr"], "lpips_status": lpips_status(lpips)}


def _finish(spec, config, trainer, images, history, resumed_from, device) -> None:
    """Rank 0: OUTPUT/vae (weights + config with the measured scaling, training spec, held-out
    metrics), then the report."""
    model = trainer.final_model().model.eval().requires_grad_(False)
    vae = Decoder(model, f"trained:{spec.name}")
    scaling = measure_scaling(vae, images, spec)
    factor = spec.vae.downsampling
    prepared = config["prepared"]
    held_out = [trimmed(i, factor) for i in load_images(prepared["held_out_urls"], spec.data.storage, "data.held_out_url")]
    try:
        lpips = LPIPS().to(device)
    except LPIPSWeightsMissing:
        lpips = None  # the report says LPIPS was not computed, and why
    metrics = held_out_metrics(vae, held_out, prepared["mean_colour"], lpips)
    with temporary_dir() as directory:
        model.save_pretrained(directory, safe_serialization=True)
        with open(os.path.join(directory, "training_spec.yaml"), "w") as f:
            yaml.safe_dump(spec.to_dict(), f, sort_keys=False)
        with open(os.path.join(directory, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        write_tree(directory, posixpath.join(spec.output.url.rstrip("/"), spec.product_dir), spec.output.storage)
    write_report(spec, config, history, metrics, resumed_from, scaling)
