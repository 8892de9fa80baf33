"""kind: train-vae — not a shard pipeline: Ray Train trains a teacher autoencoder (AutoencoderKL)
on random crops of a folder of photos, saved as OUTPUT/vae/ for `model.reference` and `--decoder`.

Its spec, driver, worker and data live in jobs/train/vae_*.py (the rest is train-decoder's); this
file is how the rest of the job layer sees it.
"""

from __future__ import annotations

from jobs.checks import check_protocol
from jobs.kinds.base import JobKind
from jobs.train.report import schedule_lines, summary_line
from jobs.train.vae_spec import TrainVaeSpec


def check(spec: TrainVaeSpec) -> None:
    check_protocol(spec.data.train_url, "data.train_url")
    check_protocol(spec.data.held_out_url, "data.held_out_url")


def describe(spec: TrainVaeSpec) -> list[str]:
    """Its `--dry-run` lines, after the checks a run makes before Ray (they read the images)."""
    from jobs.train.vae_driver import check_before_training  # torch (via decoders): not for other commands

    prepared = check_before_training(spec)
    v, d = spec.vae, spec.data
    optim, checkpoints = schedule_lines(spec)
    return [
        f"  train: AutoencoderKL (SDXL block types) block_out_channels {v.block_out_channels}, layers_per_block "
        f"{v.layers_per_block}, {v.latent_channels} latent channels, {v.downsampling}x down",
        f"  data: {prepared['train_samples']} training images in {d.train_url} ({d.crop} px crops"
        f"{', flips' if d.flips else ''}); {prepared['held_out_samples']} held-out images in {d.held_out_url}",
        optim,
        f"  loss: {spec.loss.pixel} x{spec.loss.pixel_weight:g}, kl x{spec.loss.kl_weight:g}, "
        f"lpips x{spec.loss.lpips_weight:g}",
        checkpoints,
    ]


def run(spec: TrainVaeSpec, *, progress, connect, wait: bool) -> dict:
    """`progress`: the live display (a LiveProgress), True for plain lines, or False."""
    from jobs.train.vae_driver import train_vae  # torch (via decoders): not for other commands

    return train_vae(spec, progress=progress, connect=connect, wait=wait)


KIND = JobKind("train-vae", TrainVaeSpec, run=run, check=check, describe=describe,
               summary=lambda spec, report: summary_line(report, spec.output.url))
