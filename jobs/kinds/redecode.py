"""kind: redecode — stored latents -> read -> another decoder -> image shards with the same keys."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from jobs.kinds.base import (
    Comparison,
    JobKind,
    check_chunking,
    check_name,
    model_identity,
    model_weights,
    output_identity,
    read_resources,
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
from jobs.kinds.encode import check_input, describe_input, input_plan
from pipelines.config import (
    CostConfig,
    InputConfig,
    ModelConfig,
    OutputConfig,
    QualityMonitorConfig,
    StageResources,
    WriteResources,
    require,
)
from pipelines.faults import Fault
from pipelines.pipeline import Pipeline, StageDef, Units


@dataclass(frozen=True)
class RedecodeStages:
    read: StageResources = field(default_factory=lambda: read_resources(batch_size=8))
    decode: StageResources = field(default_factory=lambda: StageResources(num_cpus=1.0, batch_size=8))
    monitor: StageResources = field(default_factory=monitor_resources)
    write: WriteResources = field(default_factory=WriteResources)
    max_retries: int = 2

    def __post_init__(self):
        require(self.max_retries >= 0, "max_retries", "an integer >= 0", self.max_retries)
        check_chunking("read", self.read.batch_size, "decode", self.decode.batch_size)


@dataclass(frozen=True)
class RedecodeSpec:
    """Decode the latents a latentmill output kept with another decoder, keeping keys and metadata."""

    name: str
    input: InputConfig
    output: OutputConfig
    kind: Literal["redecode"] = "redecode"
    # The model whose VAE `decoder: sdxl-vae` means.
    model: ModelConfig = field(default_factory=ModelConfig)
    decoder: str = "sdxl-vae"
    decoder_tiling: Union[bool, int] = False
    quality_monitor: QualityMonitorConfig | None = None
    stages: RedecodeStages = field(default_factory=RedecodeStages)
    cost: CostConfig | None = None

    def __post_init__(self):
        check_name(self)
        check_tiling(self.decoder_tiling)
        check_monitor(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": model_identity(self.model), "decoder": self.decoder,
                "decoder_tiling": self.decoder_tiling, "input": self.input.url, "output": output_identity(self),
                **monitor_identity(self)}


def check(spec: RedecodeSpec) -> None:
    check_input(spec)
    check_image_decoder(spec)


def pipeline(spec: RedecodeSpec, plan, faults: tuple[Fault, ...] = ()) -> Pipeline:
    stages = [
        StageDef("read", "pipelines.stages.read:ReadLatents", {"storage": spec.input.storage}, spec.stages.read),
        StageDef("decode", "pipelines.stages.decode:Decode", decode_kwargs(spec), spec.stages.decode),
        *monitor_stages(spec),
    ]
    metadata = {"job": spec.name, "decoder": spec.decoder, "input": spec.input.url}
    return shard_pipeline(spec, plan, stages, faults, metadata, Units("image", "images", "decoded"),
                          {**model_weights(spec), **decoder_weights(spec)})


KIND = JobKind("redecode", RedecodeSpec, plan=input_plan, pipeline=pipeline, check=check, describe=describe_input,
               comparison=Comparison("input", ("the source output's image", "this output's image (the new decoder)"),
                                     other_first=True))
