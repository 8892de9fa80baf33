"""kind: generate-video — conditioning images -> read -> SVD denoise -> temporal decode -> mp4 shards."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import decoders
from jobs.checks import check_decoder, check_model, check_protocol
from jobs.kinds.base import (
    JobKind,
    check_chunking,
    check_name,
    model_identity,
    model_weights,
    read_images_kwargs,
    read_resources,
    shard_pipeline,
)
from jobs.kinds.decoding import decoder_weights
from jobs.profiles import AutoProfile, starting_times
from pipelines.config import (
    MODEL_VIDEO_VAE,
    ConditioningInput,
    CostConfig,
    ImageConfig,
    StageResources,
    VideoConfig,
    VideoModelConfig,
    VideoOutputConfig,
    WriteResources,
    require,
)
from pipelines.errors import ConfigError
from pipelines.faults import Fault
from pipelines.pipeline import Pipeline, StageDef, Units
from pipelines.sources.conditioning import plan_conditioning
from pipelines.sources.pixel_rules import pixels_identity


@dataclass(frozen=True)
class VideoStages:
    # Defaults fit a 2-CPU machine with no GPU, as for images.
    read: StageResources = field(default_factory=lambda: read_resources(batch_size=2))
    denoise: StageResources = field(default_factory=lambda: StageResources(num_cpus=1.0, batch_size=2))
    # Clips per decode call; frames per call are bounded by video.decode_chunk_size.
    decode: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=1))
    write: WriteResources = field(default_factory=WriteResources)
    max_retries: int = 2
    # The first split of `concurrency: auto` stages from a profile (as for images; e.g. svd-xt-576x1024).
    auto_profile: AutoProfile | None = None

    def __post_init__(self):
        require(self.max_retries >= 0, "max_retries", "an integer >= 0", self.max_retries)
        check_chunking("read", self.read.batch_size, "denoise", self.denoise.batch_size)
        check_chunking("denoise", self.denoise.batch_size, "decode", self.decode.batch_size)


@dataclass(frozen=True)
class VideoSpec:
    """Image-to-video with Stable Video Diffusion: one clip per conditioning image, as mp4 shards."""

    name: str
    input: ConditioningInput
    output: VideoOutputConfig
    kind: Literal["generate-video"] = "generate-video"
    model: VideoModelConfig = field(default_factory=VideoModelConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    # Clip i gets seed `seed + i` (its noise and the conditioning image's noise augmentation).
    seed: int = 0
    # "svd-vae" (the model's own temporal VAE), a video decoder (random:tae-temporal, ...) or a
    # checkpoint path of one.
    decoder: str = MODEL_VIDEO_VAE
    stages: VideoStages = field(default_factory=VideoStages)
    cost: CostConfig | None = None

    def __post_init__(self):
        check_name(self)
        require(self.seed >= 0, "seed", "an integer >= 0", self.seed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        output = dataclasses.asdict(self.output)
        return {"kind": self.kind, "model": model_identity(self.model), "video": dataclasses.asdict(self.video),
                "seed": self.seed, "decoder": self.decoder,
                "input": {"url": self.input.url, "builtin": self.input.builtin},
                **pixels_identity(self.input.background, self.input.max_pixels),
                "output": {k: output[k] for k in ("crf", "preset", "poster", "samples_per_shard", "save_latents")}}


def check(spec: VideoSpec) -> None:
    if spec.input.url is not None:
        check_protocol(spec.input.url, "input.url")
    check_model(spec.model.reference, spec.model.family)
    check_decoder(spec.decoder, spec.model.family, own=MODEL_VIDEO_VAE, video=True)
    _check_decode_chunks(spec)
    starting_times(spec.stages)  # the profile file and its times, before any actor starts


def _check_decode_chunks(spec: VideoSpec) -> None:
    """Chunks shorter than the clip only for decoders that decode chunks exactly."""
    chunk, frames = spec.video.decode_chunk_size, spec.video.frames
    if chunk is None or chunk >= frames:
        return
    entry = None if spec.decoder == MODEL_VIDEO_VAE else decoders.lookup(spec.decoder)
    if spec.decoder == MODEL_VIDEO_VAE or (entry is not None and not entry.supports_chunking):
        raise ConfigError("video.decode_chunk_size", "", detail=(
            f"decoder {spec.decoder!r} cannot decode a clip in chunks of frames with the frames of a whole-clip "
            f"decode (its temporal layers see every frame); set it to null or >= video.frames ({frames}), or use "
            f"a decoder that chunks exactly (random:tae-temporal or a checkpoint of it)"))


def plan(spec: VideoSpec):
    return plan_conditioning(spec.input, samples_per_shard=spec.output.samples_per_shard, seed=spec.seed)


def pipeline(spec: VideoSpec, plan, faults: tuple[Fault, ...] = ()) -> Pipeline:
    v = spec.video
    # The SVD pipeline resizes too, but a batch of conditioning images must share one size.
    image = ImageConfig(height=v.height, width=v.width, resize="center-crop")
    if spec.input.builtin is not None:
        read = StageDef("read", "pipelines.stages.read:RenderBuiltinImages", {"image": image}, spec.stages.read)
    else:
        read = StageDef("read", "pipelines.stages.read:ReadImages", read_images_kwargs(spec.input, image), spec.stages.read)
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
    return shard_pipeline(spec, plan, stages, faults, metadata, Units("clip", "clips", "generated", {"frames": v.frames}),
                          {**model_weights(spec), **decoder_weights(spec)})


def describe(spec: VideoSpec) -> list[str]:
    v = spec.video
    source = spec.input.url if spec.input.url is not None else f"builtin: {spec.input.builtin}"
    return [
        f"  model: {spec.model.family} {spec.model.reference} ({spec.model.dtype}); decoder: {spec.decoder}",
        f"  clips: {v.frames} frames at {v.fps} fps, {v.width}x{v.height}, {v.steps} steps, motion bucket "
        f"{v.motion_bucket_id}, decode chunk {v.decode_chunk_size or 'all'} frames",
        f"  input: {source} ({spec.input.format})",
    ]


KIND = JobKind("generate-video", VideoSpec, plan=plan, pipeline=pipeline, check=check, describe=describe,
               file_format=lambda spec: "mp4")
