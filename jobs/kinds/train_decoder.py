"""kind: train-decoder — not a shard pipeline: Ray Train trains a decoder on encode outputs' latents.

Its spec, driver, worker, data and report live in jobs/train/; this file is how the rest of the
job layer sees it (checks, dry-run lines, run, the line printed after a run).
"""

from __future__ import annotations

from jobs.checks import check_model, check_protocol
from jobs.kinds.base import JobKind
from jobs.train.report import schedule_lines, summary_line
from jobs.train.spec import TrainDecoderSpec


def check(spec: TrainDecoderSpec) -> None:
    for i, url in enumerate(spec.data.urls):
        check_protocol(url, f"data.urls[{i}]")
    check_model(spec.model.reference, spec.model.family, vae_only=True)


def describe(spec: TrainDecoderSpec) -> list[str]:
    """Its `--dry-run` lines, after the checks a run makes before Ray (they read the data: the split's sizes)."""
    from jobs.train.driver import check_before_training  # torch (via its data module): not for other commands

    prepared = check_before_training(spec)
    optim, checkpoints = schedule_lines(spec)
    return [
        f"  train: {spec.architecture}{' (tiny)' if spec.tiny else ''} from {spec.init_weights or 'scratch'}, "
        f"target {spec.target}; model {spec.model.family} {prepared['reference_model'] or spec.model.reference}",
        f"  data: {', '.join(spec.data.urls)}: {prepared['train_samples']} training and "
        f"{prepared['held_out_samples']} held-out samples in {len(prepared['shards'])} shards "
        f"(held out {spec.data.held_out_fraction:g})",
        optim,
        f"  loss: {spec.loss.pixel} x{spec.loss.pixel_weight:g}, lpips x{spec.loss.lpips_weight:g}, "
        f"adversarial x{spec.loss.adversarial_weight:g}",
        checkpoints,
    ]


def run(spec: TrainDecoderSpec, *, progress, connect, wait: bool) -> dict:
    """`progress`: the live display (a LiveProgress), True for plain lines, or False."""
    from jobs.train.driver import train_decoder  # torch (via its data module): not for other commands

    return train_decoder(spec, progress=progress, connect=connect, wait=wait)


KIND = JobKind("train-decoder", TrainDecoderSpec, run=run, check=check, describe=describe,
               summary=lambda spec, report: summary_line(report, spec.output.url))
