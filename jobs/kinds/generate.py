"""kind: generate — prompts -> denoise -> decode (-> quality monitor) -> image shards."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Union
from urllib.parse import urlsplit

from jobs.checks import check_model, check_protocol
from jobs.dates import RunDate
from jobs.kinds.base import (
    JobKind,
    check_chunking,
    check_name,
    model_identity,
    model_weights,
    output_identity,
    shard_pipeline,
)
from jobs.kinds.decoding import (
    check_image_decoder,
    check_monitor,
    check_tiling,
    decode_kwargs,
    decoder_weights,
    monitor_identity,
    monitor_resources,
    monitor_stages,
)
from jobs.profiles import AutoProfile, starting_times
from jobs.schema import LOADER_SET
from pipelines.config import (
    MODEL_VAE,
    CostConfig,
    ModelConfig,
    NotifyConfig,
    OutputConfig,
    PromptsConfig,
    QualityMonitorConfig,
    SamplerConfig,
    StageResources,
    WriteResources,
    require,
)
from pipelines.errors import ConfigError
from pipelines.faults import Fault
from pipelines.pipeline import Pipeline, StageDef, Units
from pipelines.plan import MAX_SEED, build_plan, check_seeds
from pipelines.sources.prompts import read_prompts


@dataclass(frozen=True)
class StagesConfig:
    # Defaults fit a 2-CPU machine with no GPU: 1 + 0.5 + 0.25 CPUs leave room for Ray itself.
    denoise: StageResources = field(default_factory=lambda: StageResources(num_cpus=1.0, batch_size=4))
    # The decode stage decodes each denoise batch in chunks of its own batch_size (bounding decode
    # memory), so its batch_size is at most the denoise batch_size.
    decode: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=4))
    monitor: StageResources = field(default_factory=monitor_resources)
    write: WriteResources = field(default_factory=WriteResources)
    # A failing sample is retried this many times, then recorded as failed.
    max_retries: int = 2
    # GPUs the stages with `concurrency: auto` share; default: all the cluster's.
    gpus: int | None = None
    # The first split of the `concurrency: auto` stages from a profile's per-item times ({file, name}, as
    # `latentmill bench gpu` writes them) instead of an even one; measured times take over after warm-up.
    auto_profile: AutoProfile | None = None

    def __post_init__(self):
        require(self.max_retries >= 0, "max_retries", "an integer >= 0", self.max_retries)
        if self.gpus is not None:
            require(self.gpus > 0, "gpus", "a positive number of GPUs", self.gpus)
        check_chunking("denoise", self.denoise.batch_size, "decode", self.decode.batch_size)


@dataclass(frozen=True)
class JobSpec:
    name: str
    prompts: PromptsConfig
    output: OutputConfig
    kind: Literal["generate"] = "generate"
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    # Default: every prompt `images_per_prompt` times. Larger values cycle through the prompts.
    num_images: int | None = None
    # Sample i gets seed `seed + i`, so any sample can be regenerated alone with plain diffusers.
    seed: int = 0
    # "sdxl-vae" (the model's own VAE), a registered decoder (published weights), a random build
    # ("random:taesd"), a checkpoint path or a Hugging Face id.
    decoder: str = MODEL_VAE
    # Decode in overlapping tiles (true, or a tile size in pixels) for sizes beyond memory; for
    # decoders that support it (sdxl-vae, taesd, tae-192).
    decoder_tiling: Union[bool, int] = False
    # Off by default: PSNR/SSIM of the decoder against the model's VAE on a fraction of the samples.
    quality_monitor: QualityMonitorConfig | None = None
    stages: StagesConfig = field(default_factory=StagesConfig)
    # Prices per GPU-hour and CPU-hour for the report's cost figures; none given: no cost shown.
    cost: CostConfig | None = None
    # Where to POST a JSON summary of each run (success or failure).
    notify: NotifyConfig | None = None
    # The run's date and the {date} template of output.url: set by the loader (--date), not in YAML.
    run_date: RunDate | None = field(default=None, metadata=LOADER_SET)

    def __post_init__(self):
        check_name(self)
        if self.num_images is not None:
            require(self.num_images > 0, "num_images", "a positive integer", self.num_images)
        require(0 <= self.seed <= MAX_SEED, "seed", f"an integer from 0 to {MAX_SEED} (2^63 - 1)", self.seed)
        if self.num_images is not None or self.prompts.inline is not None:  # else known once the prompt file is read
            check_seeds(self.seed, self.num_images or len(self.prompts.inline) * self.prompts.images_per_prompt)
        check_tiling(self.decoder_tiling)
        check_monitor(self)

    def to_dict(self) -> dict[str, Any]:
        """The spec as saved with the output, parseable again: output.url as written ({date}
        templates kept, the loader-set run_date left out), a webhook URL (often holding a token)
        reduced to its host."""
        spec = {k: v for k, v in dataclasses.asdict(self).items() if k != "run_date"}
        if self.run_date is not None and self.run_date.output_template is not None:
            spec["output"]["url"] = self.run_date.output_template
        if spec["notify"] and spec["notify"]["webhook"]:
            spec["notify"]["webhook"] = _origin(spec["notify"]["webhook"]) + "/..."
        return spec

    def identity(self) -> dict[str, Any]:
        """What decides the samples' content. Two runs with equal identities write equal outputs;
        resources and batch sizes are left out, since they only change how fast."""
        spec = self.to_dict()
        return {
            "kind": self.kind,
            "model": model_identity(self.model),
            "sampler": spec["sampler"],
            "seed": self.seed,
            "decoder": self.decoder,
            "decoder_tiling": self.decoder_tiling,
            "output": output_identity(self),
            **monitor_identity(self),
        }


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def check(spec: JobSpec) -> None:
    run_date = spec.run_date
    if spec.output.retention is not None and (run_date is None or run_date.output_template is None):
        raise ConfigError("output.retention", "", detail="needs {date} in output.url (retention applies to dated outputs)")
    check_model(spec.model.reference, spec.model.family)
    if spec.prompts.file is not None:
        check_protocol(spec.prompts.file, "prompts.file")
    check_image_decoder(spec)
    starting_times(spec.stages)  # the profile file and its times, before any actor starts


def plan(spec: JobSpec):
    prompts = list(spec.prompts.inline) if spec.prompts.inline is not None else read_prompts(spec.prompts.file)
    return build_plan(prompts, images_per_prompt=spec.prompts.images_per_prompt, num_images=spec.num_images,
                      seed=spec.seed, samples_per_shard=spec.output.samples_per_shard)


def pipeline(spec: JobSpec, plan, faults: tuple[Fault, ...] = ()) -> Pipeline:
    stages = [
        StageDef("denoise", "pipelines.stages.denoise:Denoise",
                 {"model": spec.model, "sampler": spec.sampler, "batch_size": spec.stages.denoise.batch_size},
                 spec.stages.denoise),
        # generate knows its images' size before the first batch (a compiled decoder warms up at it)
        StageDef("decode", "pipelines.stages.decode:Decode",
                 {**decode_kwargs(spec), "warmup_size": (spec.sampler.height, spec.sampler.width)}, spec.stages.decode),
        *monitor_stages(spec),
    ]
    s = spec.sampler
    metadata = {"job": spec.name, "model": spec.model.reference, "decoder": spec.decoder, "scheduler": s.scheduler,
                "steps": s.steps, "guidance_scale": s.guidance_scale, "negative_prompt": s.negative_prompt}
    return shard_pipeline(spec, plan, stages, faults, metadata, Units("image", "images", "generated"),
                          {**model_weights(spec), **decoder_weights(spec)}, gpus=spec.stages.gpus)


def describe(spec: JobSpec) -> list[str]:
    s = spec.sampler
    return [
        f"  model: {spec.model.family} {spec.model.reference} ({spec.model.dtype}); decoder: {spec.decoder}",
        f"  sampler: {s.scheduler}, {s.steps} steps, guidance {s.guidance_scale}, {s.width}x{s.height}",
    ]


KIND = JobKind("generate", JobSpec, plan=plan, pipeline=pipeline, check=check, describe=describe, dated=True)
