"""kind: encode — images -> read -> the model's VAE encoder -> latent shards (+ resized image, caption)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from jobs.checks import check_model, check_protocol
from jobs.kinds.base import (
    Comparison,
    JobKind,
    check_chunking,
    check_name,
    model_identity,
    model_weights,
    output_identity,
    read_images_kwargs,
    read_resources,
    shard_pipeline,
)
from pipelines.config import (
    CostConfig,
    ImageConfig,
    InputConfig,
    ModelConfig,
    OutputConfig,
    StageResources,
    WriteResources,
    require,
)
from pipelines.faults import Fault
from pipelines.pipeline import Pipeline, StageDef, Units
from pipelines.sources.images import plan_images
from pipelines.sources.pixel_rules import pixels_identity


@dataclass(frozen=True)
class EncodeStages:
    read: StageResources = field(default_factory=lambda: read_resources(batch_size=8))
    encode: StageResources = field(default_factory=lambda: StageResources(num_cpus=1.0, batch_size=8))
    write: WriteResources = field(default_factory=WriteResources)
    max_retries: int = 2

    def __post_init__(self):
        require(self.max_retries >= 0, "max_retries", "an integer >= 0", self.max_retries)
        check_chunking("read", self.read.batch_size, "encode", self.encode.batch_size)


@dataclass(frozen=True)
class EncodeSpec:
    """Latent precompute: images -> the model's frozen VAE encoder -> latents, images and captions."""

    name: str
    input: InputConfig
    output: OutputConfig
    kind: Literal["encode"] = "encode"
    # The model whose VAE encodes ("tiny", a Hugging Face id or a from_pretrained directory).
    model: ModelConfig = field(default_factory=ModelConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    # Latents are stored as the diffusion model sees them (VAE mean x scaling factor).
    latent_dtype: Literal["float16", "float32"] = "float32"
    stages: EncodeStages = field(default_factory=EncodeStages)
    cost: CostConfig | None = None

    def __post_init__(self):
        check_name(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        spec = self.to_dict()
        return {"kind": self.kind, "model": model_identity(self.model), "image": spec["image"],
                "latent_dtype": self.latent_dtype, "input": self.input.url,
                **pixels_identity(self.input.background, self.input.max_pixels), "output": output_identity(self)}


def input_plan(spec):
    """The plan of a kind that reads an image source (encode, redecode)."""
    i = spec.input
    return plan_images(i.url, samples_per_shard=spec.output.samples_per_shard, format=i.format, storage=i.storage)


def check_input(spec) -> None:
    check_protocol(spec.input.url, "input.url")
    check_model(spec.model.reference, spec.model.family, vae_only=True)


def describe_input(spec) -> list[str]:
    return [f"  input: {spec.input.url} ({spec.input.format})"]


def pipeline(spec: EncodeSpec, plan, faults: tuple[Fault, ...] = ()) -> Pipeline:
    encode = {
        "encoder": "sdxl-vae", "model_reference": spec.model.reference, "latent_dtype": spec.latent_dtype,
        "image_format": spec.output.image_format, "quality": spec.output.quality, "dtype": spec.model.dtype,
        "batch_size": spec.stages.encode.batch_size,
    }
    stages = [
        StageDef("read", "pipelines.stages.read:ReadImages", read_images_kwargs(spec.input, spec.image), spec.stages.read),
        StageDef("encode", "pipelines.stages.encode:Encode", encode, spec.stages.encode),
    ]
    metadata = {"job": spec.name, "model": spec.model.reference, "input": spec.input.url}
    return shard_pipeline(spec, plan, stages, faults, metadata, Units("image", "images", "encoded"), model_weights(spec))


KIND = JobKind("encode", EncodeSpec, plan=input_plan, pipeline=pipeline, check=check_input, describe=describe_input,
               comparison=Comparison("latents", ("resized input (stored in the tar)", "its latents decoded by the model's VAE")))
