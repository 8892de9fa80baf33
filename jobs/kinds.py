"""Job kinds: each plans its samples and builds a chain of stages; the engine runs them all alike.

Adding a kind adds a `JobKind` row here, its spec class (jobs/spec.py) and its stages; no engine
code changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pipelines.faults import Fault
from pipelines.models.random_models import NOISE_NOTE, is_random_model
from pipelines.pipeline import Pipeline, StageDef, Units
from pipelines.plan import build_plan
from pipelines.sources.prompts import read_prompts


@dataclass(frozen=True)
class JobKind:
    name: str
    plan: Callable  # spec -> plan
    pipeline: Callable  # (spec, plan, faults) -> Pipeline


def weights_identity(spec) -> dict:
    """Which weights the spec's model and decoder references mean now (pipelines/models/fingerprint.py)."""
    from pipelines.models.fingerprint import decoder_fingerprint, model_fingerprint

    weights = {"model": model_fingerprint(spec.model.reference)}
    if hasattr(spec, "decoder"):
        weights["decoder"] = decoder_fingerprint(spec.decoder)
    return weights


def _base(spec, plan, stages, faults, sample_metadata, units: Units) -> Pipeline:
    if is_random_model(getattr(getattr(spec, "model", None), "reference", "")):
        sample_metadata = {**sample_metadata, "weights": NOISE_NOTE}  # every sample says it is noise
    return Pipeline(
        name=spec.name, kind=spec.kind, plan=plan, stages=tuple(stages), output=spec.output, write=spec.stages.write,
        identity={**spec.identity(), "weights": weights_identity(spec)}, spec=spec.to_dict(),
        sample_metadata=sample_metadata, max_retries=spec.stages.max_retries, faults=faults, cost=spec.cost,
        gpus=getattr(spec.stages, "gpus", None), units=units,
    )


# -- generate: prompts -> denoise -> decode -> image shards -------------------------------------------

def generate_plan(spec):
    prompts = list(spec.prompts.inline) if spec.prompts.inline is not None else read_prompts(spec.prompts.file)
    return build_plan(prompts, images_per_prompt=spec.prompts.images_per_prompt, num_images=spec.num_images,
                      seed=spec.seed, samples_per_shard=spec.output.samples_per_shard)


def decode_kwargs(spec) -> dict:
    """The image decode stage's arguments, from the spec of a kind that decodes images."""
    return {
        "decoder": spec.decoder, "model_reference": spec.model.reference, "image_format": spec.output.image_format,
        "quality": spec.output.quality, "save_latents": spec.output.save_latents, "dtype": spec.model.dtype,
        "tiling": spec.decoder_tiling, "batch_size": spec.stages.decode.batch_size,
        "monitor_fraction": spec.quality_monitor.fraction if spec.quality_monitor else None,
        "channels_last": spec.model.channels_last, "compile": spec.model.compile,
        # generate knows its images' size before the first batch; redecode's come from its input
        "warmup_size": (spec.sampler.height, spec.sampler.width) if hasattr(spec, "sampler") else None,
    }


def monitor_stages(spec) -> list[StageDef]:
    """The quality monitor after decode, when the spec has one (pipelines/stages/quality.py)."""
    if spec.quality_monitor is None:
        return []
    kwargs = {"model_reference": spec.model.reference, "dtype": spec.model.dtype, "tiling": spec.decoder_tiling,
              "batch_size": spec.stages.monitor.batch_size}
    return [StageDef("monitor", "pipelines.stages.quality:QualityMonitor", kwargs, spec.stages.monitor)]


def generate_pipeline(spec, plan, faults: tuple[Fault, ...] = ()) -> Pipeline:
    decode = decode_kwargs(spec)
    stages = [
        StageDef("denoise", "pipelines.stages.denoise:Denoise",
                 {"model": spec.model, "sampler": spec.sampler, "batch_size": spec.stages.denoise.batch_size},
                 spec.stages.denoise),
        StageDef("decode", "pipelines.stages.decode:Decode", decode, spec.stages.decode),
        *monitor_stages(spec),
    ]
    s = spec.sampler
    metadata = {"job": spec.name, "model": spec.model.reference, "decoder": spec.decoder, "scheduler": s.scheduler,
                "steps": s.steps, "guidance_scale": s.guidance_scale, "negative_prompt": s.negative_prompt}
    return _base(spec, plan, stages, faults, metadata, Units("image", "images", "generated"))


# -- encode: images -> read -> VAE encoder -> latent shards (+ the resized image and caption) --------

def input_plan(spec):
    from pipelines.sources.images import plan_images

    i = spec.input
    return plan_images(i.url, samples_per_shard=spec.output.samples_per_shard, format=i.format, storage=i.storage)


def encode_pipeline(spec, plan, faults: tuple[Fault, ...] = ()) -> Pipeline:
    encode = {
        "encoder": "sdxl-vae", "model_reference": spec.model.reference, "latent_dtype": spec.latent_dtype,
        "image_format": spec.output.image_format, "quality": spec.output.quality, "dtype": spec.model.dtype,
        "batch_size": spec.stages.encode.batch_size,
    }
    stages = [
        StageDef("read", "pipelines.stages.read:ReadImages", {"image": spec.image, "storage": spec.input.storage}, spec.stages.read),
        StageDef("encode", "pipelines.stages.encode:Encode", encode, spec.stages.encode),
    ]
    metadata = {"job": spec.name, "model": spec.model.reference, "input": spec.input.url}
    return _base(spec, plan, stages, faults, metadata, Units("image", "images", "encoded"))


# -- redecode: stored latents -> read -> decoder -> image shards with the same keys ----------------

def redecode_pipeline(spec, plan, faults: tuple[Fault, ...] = ()) -> Pipeline:
    decode = decode_kwargs(spec)
    stages = [
        StageDef("read", "pipelines.stages.read:ReadLatents", {"storage": spec.input.storage}, spec.stages.read),
        StageDef("decode", "pipelines.stages.decode:Decode", decode, spec.stages.decode),
        *monitor_stages(spec),
    ]
    metadata = {"job": spec.name, "decoder": spec.decoder, "input": spec.input.url}
    return _base(spec, plan, stages, faults, metadata, Units("image", "images", "decoded"))


# -- generate-video: conditioning images -> read -> SVD denoise -> temporal decode -> mp4 shards -------

def video_plan(spec):
    from pipelines.sources.conditioning import plan_conditioning

    return plan_conditioning(spec.input, samples_per_shard=spec.output.samples_per_shard, seed=spec.seed)


def video_pipeline(spec, plan, faults: tuple[Fault, ...] = ()) -> Pipeline:
    from pipelines.config import ImageConfig
    v = spec.video
    # The SVD pipeline resizes too, but a batch of conditioning images must share one size.
    image = ImageConfig(height=v.height, width=v.width, resize="center-crop")
    if spec.input.builtin is not None:
        read = StageDef("read", "pipelines.stages.read:RenderBuiltinImages", {"image": image}, spec.stages.read)
    else:
        read = StageDef("read", "pipelines.stages.read:ReadImages", {"image": image, "storage": spec.input.storage}, spec.stages.read)
    decode = {"decoder": spec.decoder, "model_reference": spec.model.reference, "video": v, "output": spec.output,
              "dtype": spec.model.dtype, "batch_size": spec.stages.decode.batch_size,
              "channels_last": spec.model.channels_last, "compile": spec.model.compile}
    stages = [
        read,
        StageDef("denoise", "pipelines.stages.video:VideoDenoise", {"model": spec.model, "video": v, "batch_size": spec.stages.denoise.batch_size},
                 spec.stages.denoise),
        StageDef("decode", "pipelines.stages.video:VideoDecode", decode, spec.stages.decode),
    ]
    metadata = {"job": spec.name, "model": spec.model.reference, "decoder": spec.decoder, "steps": v.steps,
                "min_guidance_scale": v.min_guidance_scale, "max_guidance_scale": v.max_guidance_scale,
                "motion_bucket_id": v.motion_bucket_id, "noise_aug_strength": v.noise_aug_strength,
                "decode_chunk_size": v.decode_chunk_size,
                "input": spec.input.url if spec.input.url is not None else f"builtin:{spec.input.builtin}"}
    return _base(spec, plan, stages, faults, metadata, Units("clip", "clips", "generated", {"frames": v.frames}))


KINDS = {
    k.name: k
    for k in [
        JobKind("generate", generate_plan, generate_pipeline),
        JobKind("encode", input_plan, encode_pipeline),
        JobKind("redecode", input_plan, redecode_pipeline),
        JobKind("generate-video", video_plan, video_pipeline),
    ]
}


def kind_of(spec) -> JobKind:
    return KINDS[spec.kind]
