"""What each Ray Train worker runs for `kind: train-decoder` (see jobs/train/driver.py for the driver)."""

from __future__ import annotations

import json
import os
import posixpath
import time

import torch
import yaml

import decoders
from decoders.base import Decoder
from decoders.metrics import LPIPS, LPIPSWeightsMissing, lpips_status, score
from decoders.training import DecoderTrainer, PatchDiscriminator, TrainableDecoder, TrainSettings
from jobs.schema import build as build_spec
from jobs.train.checkpoint import DECODER_DIR, STATE_JSON, STATE_TENSORS, same_decoder, temporary_dir, write_tree
from jobs.train.data import batches, held_out_samples, shards_from, units, worker_stream
from jobs.train.progress import tell
from jobs.train.reference import encoding_model
from jobs.train.report import write_report
from jobs.train.spec import TrainDecoderSpec
from pipelines.config import MODEL_VAE
from pipelines.models.decoding import load_decoder
from pipelines.worker_setup import collector_paused

TELL_EVERY_S = 0.5  # how often rank 0 tells the driver its step (a queue put, not a print)


def _spec(config: dict) -> TrainDecoderSpec:
    return build_spec(TrainDecoderSpec, config["spec"])


def device_for(use_gpu: bool) -> torch.device:
    # lazy: keeps ray out of processes that never call this
    import ray.train.torch

    return ray.train.torch.get_device() if use_gpu and torch.cuda.is_available() else torch.device("cpu")


def precision_for(spec: TrainDecoderSpec, device: torch.device) -> str:
    if spec.optim.precision != "auto":
        return spec.optim.precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def _decoder(spec: TrainDecoderSpec, latent_scaling: dict):
    if spec.init_weights:
        return decoders.load(spec.init_weights, device="cpu")
    decoder = decoders.build(spec.architecture, tiny=spec.tiny, seed=spec.seed, device="cpu")
    decoder.model.register_to_config(**latent_scaling)  # saved with it: config.json holds the scaling
    return decoder


def _reference_decoder(spec: TrainDecoderSpec, device):
    """The VAE of the model that encoded the data (a teacher's, when a teacher encoded it)."""
    return load_decoder(MODEL_VAE, encoding_model(spec), str(device), spec.model.dtype)


def train_loop(config: dict) -> None:
    # lazy: keeps ray out of processes that never call this
    import ray.train
    import ray.train.torch

    spec = _spec(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(spec.scaling.cpus_per_worker)))
    device = device_for(config["use_gpu"])
    torch.manual_seed(spec.seed)  # DDP broadcasts rank 0's weights; the discriminator starts alike too
    with collector_paused():  # the decoder's first use imports diffusers (see collector_paused)
        decoder = _decoder(spec, config["prepared"]["latent_scaling"])
    decoder.model.requires_grad_(False)
    for module in decoder.decode_modules():
        module.requires_grad_(True)
    net = ray.train.torch.prepare_model(TrainableDecoder(decoder), move_to_device=device)
    loss = spec.loss
    discriminator = None
    if loss.adversarial_weight > 0:
        discriminator = ray.train.torch.prepare_model(PatchDiscriminator(), move_to_device=device)
    lpips = None
    if loss.lpips_weight > 0:
        lpips = LPIPS().to(device)
    o = spec.optim
    settings = TrainSettings(
        steps=o.steps, lr=o.lr, weight_decay=o.weight_decay, warmup_steps=o.warmup_steps, min_lr_ratio=o.min_lr_ratio,
        grad_clip=o.grad_clip, pixel_loss=loss.pixel, pixel_weight=loss.pixel_weight, lpips_weight=loss.lpips_weight,
        adversarial_weight=loss.adversarial_weight, adversarial_start_step=loss.adversarial_start_step,
        discriminator_lr=loss.discriminator_lr, ema_decay=o.ema_decay, precision=precision_for(spec, device),
    )
    trainer = DecoderTrainer(net, settings, discriminator=discriminator, lpips=lpips, device=device)
    history: list[dict] = []
    resumed_from = restore(trainer, history, config["prepared"]["decoder"])

    shards = shards_from(config["prepared"]["shards"])
    stream = worker_stream(units(shards, world), rank, world, spec.seed, trainer.step_count * o.batch_size,
                           spec.data.storage, spec.data.crop, spec.data.shuffle_buffer)
    data = batches(stream, o.batch_size)
    reference = _reference_decoder(spec, device) if spec.target == "reference" else None

    def next_batch(step: int):
        latents, images = next(data)
        # decode runs under inference_mode; a clone outside it is a tensor autograd may save for backward
        return latents, reference.decode(latents).clone() if reference is not None else images

    run_steps(trainer, next_batch, spec, config, history)
    if rank == 0:
        tell(config.get("progress_queue"), {"kind": "evaluating", "samples": spec.eval_samples})
        _finish(spec, config, trainer, decoder, history, resumed_from, device)


def run_steps(trainer, next_batch, spec, config: dict, history: list) -> None:
    """Train from `trainer.step_count` to `spec.optim.steps`: `next_batch(step)` gives (inputs, target);
    rank 0 tells the driver its progress; every rank checkpoints (Ray Train's report is a collective).
    Shared by every training kind's workers."""
    # lazy: keeps ray out of processes that never call this
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    o = spec.optim
    resource_per_worker = 1.0 if config["use_gpu"] else spec.scaling.cpus_per_worker
    queue = config.get("progress_queue") if rank == 0 else None
    identity = config["prepared"]["decoder"]
    last_told = 0.0
    while trainer.step_count < o.steps:
        started = time.perf_counter()
        metrics = trainer.step(*next_batch(trainer.step_count))
        seconds = time.perf_counter() - started
        step = trainer.step_count
        metrics.update(step=step, seconds=seconds, images_per_s=o.batch_size * world / seconds,
                       resource_s=seconds * world * resource_per_worker)
        history.append(metrics)
        if queue is not None and (time.time() - last_told >= TELL_EVERY_S or step == o.steps):
            last_told = time.time()  # the driver draws the bar (jobs/train/progress.py)
            tell(queue, {"kind": "step", "step": step, "steps": o.steps, "loss": metrics["total"],
                         "images_per_s": metrics["images_per_s"]})
        if step % spec.checkpoints.every_steps == 0 or step == o.steps:
            save_checkpoint(trainer, history, identity, rank, metrics)
            tell(queue, {"kind": "checkpoint", "step": step})


def restore(trainer, history: list, identity: dict) -> int | None:
    """Load the latest checkpoint of this run, if any (a restarted worker group or a rerun driver)."""
    # lazy: keeps ray out of processes that never call this
    import ray.train
    from safetensors.torch import load_file

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        with open(os.path.join(directory, STATE_JSON)) as f:
            meta = json.load(f)
        if not same_decoder(meta["decoder"], identity):
            raise ValueError(f"checkpoint {checkpoint.path} is of {meta['decoder']}, not {identity}")
        trainer.load_state(load_file(os.path.join(directory, STATE_TENSORS), device=str(trainer.device)), meta)
    history.extend(meta["history"])
    return trainer.step_count


def save_checkpoint(trainer, history: list, identity: dict, rank: int, metrics: dict) -> None:
    """Rank 0 saves the state; every rank reports (Ray Train's report is a collective)."""
    # lazy: keeps ray out of processes that never call this
    import ray.train
    from safetensors.torch import save_file

    reported = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if rank != 0:
        ray.train.report(reported)
        return
    tensors, meta = trainer.state()
    with temporary_dir() as directory:
        save_file(tensors, os.path.join(directory, STATE_TENSORS))
        with open(os.path.join(directory, STATE_JSON), "w") as f:
            json.dump({**meta, "decoder": identity, "history": history}, f)
        ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _finish(spec, config, trainer, decoder, history, resumed_from, device) -> None:
    """Rank 0: the final decoder (EMA weights if on), held-out metrics, spec and report, to the output."""
    model = trainer.final_model().model.eval().requires_grad_(False)
    final = Decoder(model, f"trained:{spec.architecture}")
    lpips = None
    try:
        lpips = LPIPS().to(device)
    except LPIPSWeightsMissing:
        pass  # the report says LPIPS was not computed, and why
    metrics = _held_out_metrics(spec, config, final, lpips)
    output = spec.output.url.rstrip("/")
    with temporary_dir() as directory:
        final.save_pretrained(directory)
        with open(os.path.join(directory, "training_spec.yaml"), "w") as f:
            yaml.safe_dump(spec.to_dict(), f, sort_keys=False)
        with open(os.path.join(directory, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        write_tree(directory, posixpath.join(output, DECODER_DIR), spec.output.storage)
    write_report(spec, config, history, metrics, resumed_from)


def _held_out_metrics(spec, config, decoder, lpips) -> dict:
    shards = shards_from(config["prepared"]["shards"])
    scores: dict[str, list] = {}
    count = 0
    for _, latents, image in held_out_samples(shards, spec.data.storage, spec.eval_samples):
        z = torch.tensor(latents)[None]  # copies: decoded images are read-only arrays
        x = torch.tensor(image).permute(2, 0, 1)[None].double() / 255.0
        for name, values in score(x, decoder.decode(z).cpu().double(), lpips).items():
            scores.setdefault(name, []).extend(values)
        count += 1
    summary = {name: sum(v) / len(v) for name, v in scores.items()}
    return {"held_out_samples": count, "against": "original images", **summary, "lpips_status": lpips_status(lpips)}
