"""`kind: train-decoder`: train a decoder on encode outputs with Ray Train (TorchTrainer).

Driver: check everything that can be checked before a worker starts (data has latents of the
decoder's channel count, both splits non-empty, LPIPS weights present, an existing checkpoint is of
this architecture), then run a TorchTrainer whose checkpoints go to `checkpoints.url` (any fsspec
URL). Ray Train restarts a failed worker group from the latest checkpoint (`checkpoints.max_failures`);
a rerun of the same spec after the driver died (once its output lease expires) finds the same run by
name and storage and resumes.
The run name carries a digest of the spec's identity (architecture included), so a changed spec
never resumes another's checkpoints; a checkpoint of another architecture can only come in as
`init_weights`, which is checked here.

Workers (`train_loop`): DDP over gloo (CPU) or NCCL (GPU); each streams its own shards
(jobs/train/data.py); `decoders.training.DecoderTrainer` does the steps. Rank 0 checkpoints the whole
state (model, discriminator, optimisers, schedule, EMA, step, loss history) as safetensors + JSON,
and at the end writes the decoder (`decoders.load(OUTPUT/decoder)`), its spec and held-out metrics
beside it, and the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import posixpath
import time
import uuid

import yaml
from pyarrow.fs import FSSpecHandler, PyFileSystem

import decoders
from decoders import ARCHITECTURES
from decoders.metrics import LPIPSWeightsMissing, require_lpips_weights
from jobs.train.checkpoint import public_config
from jobs.train.data import first_sample, latent_statistics, normalising_scaling, scan
from jobs.train.progress import TrainDisplay
from jobs.train.reference import encoding_model
from jobs.train.spec import TrainDecoderSpec
from pipelines.errors import ConfigError
from pipelines.observe.phases import phase
from pipelines.observe.progress import LiveProgress
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.lease import OutputLease, describe_holder
from pipelines.sinks.storage import open_output, write_json


def run_name(spec) -> str:
    """Ray Train's run name: the spec name plus a digest of what decides the weights, so a rerun of
    the same spec finds its checkpoints and a changed spec does not resume another's."""
    digest = hashlib.sha256(json.dumps(spec.identity(), sort_keys=True).encode()).hexdigest()[:10]
    return f"{spec.name}-{digest}"


def decoder_identity(spec: TrainDecoderSpec) -> dict:
    """The class and config of the decoder the spec trains (built on the meta device: no memory)."""
    if spec.init_weights:
        dec = decoders.load(spec.init_weights, device="cpu")
        config = dict(dec.model.config)
        if type(dec.model).__name__ != _architecture_class(spec):
            raise ConfigError("init_weights", "", detail=f"{spec.init_weights!r} holds a {type(dec.model).__name__}, "
                              f"but architecture {spec.architecture!r} is a {_architecture_class(spec)}")
    else:
        config = dict(decoders.build(spec.architecture, tiny=spec.tiny, device="meta").model.config)
    return {"class": _architecture_class(spec), "config": public_config(config)}


def _architecture_class(spec) -> str:
    return ARCHITECTURES[spec.architecture].class_name


def check_before_training(spec: TrainDecoderSpec) -> dict:
    """Every check that needs no worker; returns what the workers need (shards, decoder identity)."""
    shards = scan(spec.data.urls, spec.data.storage, spec.data.held_out_fraction, spec.data.split_seed)
    train = sum(len(s.train_keys) for s in shards)
    held = sum(len(s.held_out_keys) for s in shards)
    if held == 0:
        raise ConfigError("data.held_out_fraction", "", detail=f"the held-out split is empty: none of the {train} "
                          f"samples falls in a fraction of {spec.data.held_out_fraction} (split_seed "
                          f"{spec.data.split_seed}); raise the fraction or add data")
    if train == 0:
        raise ConfigError("data.held_out_fraction", "", detail=f"the training split is empty: all {held} samples are held out")
    identity = decoder_identity(spec)
    key, latents, image = first_sample(shards, spec.data.storage)
    channels = identity["config"].get("latent_channels", 4)
    if latents.ndim != 3 or latents.shape[0] != channels:
        raise ConfigError("data.urls", "", detail=f"sample {key} has latents of shape {latents.shape}, but "
                          f"{spec.architecture} decodes {channels}-channel latents (C, h, w); these latents come "
                          f"from another VAE")
    factor = image.shape[0] // latents.shape[1]
    latent_scaling = _latent_scaling(spec, shards) if spec.normalize_latents and not spec.init_weights else {}
    identity["config"].update(latent_scaling)
    if spec.data.crop is not None and spec.data.crop > min(latents.shape[1:]):
        raise ConfigError("data.crop", "", detail=f"a crop of {spec.data.crop} latent cells is larger than the "
                          f"latents ({latents.shape[1]}x{latents.shape[2]})")
    reference_model = encoding_model(spec) if spec.target == "reference" else None
    if spec.loss.lpips_weight > 0:
        try:
            require_lpips_weights()
        except LPIPSWeightsMissing as exc:
            raise ConfigError("loss.lpips_weight", "", detail=f"> 0 needs LPIPS: {exc}") from None
    return {"shards": [dataclasses.asdict(s) for s in shards], "decoder": identity, "train_samples": train,
            "held_out_samples": held, "image_factor": factor, "latent_scaling": latent_scaling,
            "reference_model": reference_model}



def _latent_scaling(spec: TrainDecoderSpec, shards) -> dict:
    """scaling_factor and shift_factor that bring the training latents to mean 0, std 1 in the
    decoder (Decoder.to_decoder_space divides by the one and adds the other)."""
    mean, std = latent_statistics(shards, spec.data.storage)
    if not std > 0:
        raise ConfigError("data.urls", "", detail=f"the training latents are constant ({mean}): nothing to learn from; "
                          "set normalize_latents: false to train on them anyway")
    return normalising_scaling(mean, std)


def _storage(spec):
    """(storage_path, storage_filesystem) for Ray Train: local paths as they are, others via fsspec."""
    fs, root = open_output(spec.checkpoint_url, spec.output.storage)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        os.makedirs(root, exist_ok=True)
        return root, None
    return root, PyFileSystem(FSSpecHandler(fs))


def train_decoder(spec: TrainDecoderSpec, *, progress=True, connect=None, wait: bool = False) -> dict:
    """Check the spec and data, then (`connect`: join a Ray cluster) train; returns the final report."""
    return run_training(spec, check_before_training, _decoder_loop, progress=progress, connect=connect, wait=wait)


def _decoder_loop():
    from jobs.train.worker import train_loop  # torch, DDP: only in Ray Train's workers and when training

    return train_loop


def run_training(spec, prepare, load_loop, *, progress=True, connect=None, wait: bool = False) -> dict:
    """What every training kind's driver does: `prepare(spec)` (the checks before Ray; returns what
    the workers need), then the TorchTrainer running `load_loop()` (imported only when training).

    Like a generation job, training holds its output's lease while it runs (`wait`: wait for a
    driver that holds it instead of refusing), so two drivers never write the same checkpoints.
    """
    finished = finished_report(spec)
    if finished is not None:  # a rerun of a finished training: no Ray, and the report stays as it is
        return {**finished, "nothing_to_do": True}
    prepared = prepare(spec)
    layout = OutputLayout(spec.output.url, spec.output.storage)
    run_id = f"{run_name(spec)}-{uuid.uuid4().hex[:6]}"
    with OutputLease(layout, run_id, spec.output.lease_ttl_s).acquire(wait=wait) as lease:
        report = _train(spec, prepared, load_loop(), progress, connect)
        lease.check()  # a driver that lost its lease mid-run says so instead of claiming the result
        if lease.taken_over:
            report["notes"] = [f"took over the expired lease of {describe_holder(lease.taken_over)}"]
            write_json(layout.fs, layout.path("report.json"), {k: v for k, v in report.items() if k != "driver_wall_s"})
    return report


def finished_report(spec) -> dict | None:
    """The report of this spec's training where its output holds the finished result (the trained
    model's saved training spec has this spec's identity, and report.json, written last, exists); else None."""
    fs, root = open_output(spec.output.url, spec.output.storage)
    saved_spec = posixpath.join(root, spec.product_dir, "training_spec.yaml")
    report = posixpath.join(root, "report.json")
    try:
        saved = yaml.safe_load(fs.cat_file(saved_spec))
        finished = json.loads(fs.cat_file(report))
    except (FileNotFoundError, ValueError, yaml.YAMLError):
        return None
    identity = spec.identity()
    if not isinstance(saved, dict) or _canonical({k: saved.get(k) for k in identity}) != _canonical(identity):
        return None
    return finished


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _train(spec, prepared: dict, train_loop, progress, connect) -> dict:
    # lazy: keeps ray out of processes that never call this
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    if connect is not None:
        connect()
    use_gpu = spec.scaling.use_gpu
    if use_gpu == "auto":
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    storage_path, storage_fs = _storage(spec)
    # Rank 0 tells the driver its steps through a queue; the driver draws the bar (jobs/train/progress.py).
    queue = Queue(maxsize=1000) if progress else None
    config = {"spec": spec.to_dict(), "prepared": prepared, "use_gpu": use_gpu, "progress": bool(progress),
              "run_name": run_name(spec), "progress_queue": queue}
    phase(f"starting {spec.scaling.num_workers} training worker(s) ({'GPU' if use_gpu else 'CPU'}); "
          f"{spec.optim.steps} steps")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=spec.scaling.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": spec.scaling.cpus_per_worker}),
        run_config=RunConfig(
            name=run_name(spec), storage_path=storage_path, storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoints.keep),
            failure_config=FailureConfig(max_failures=spec.checkpoints.max_failures),
        ),
    )
    started = time.time()
    if isinstance(progress, LiveProgress):
        progress.stop()  # one live display at a time: the training bar takes over from the phase lines
    with TrainDisplay(queue, spec.optim.steps, spec.name) if queue is not None else contextlib.nullcontext():
        result = trainer.fit()
    if result.error is not None:
        raise result.error
    fs, root = open_output(spec.output.url, spec.output.storage)
    with fs.open(posixpath.join(root, "report.json"), "rb") as f:
        report = json.load(f)
    report["driver_wall_s"] = time.time() - started
    return report
