"""A toy job kind for tests: `kind: toy-squares` writes, for sample i, a text file holding i*i.

Three stages (count -> square -> render), defined here and nowhere in the project: the test that
registers it proves a kind is one file plus its stage classes (jobs/kinds/base.py), with no change
to the spec loader, `run`, `--dry-run` or the engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from jobs.kinds.base import JobKind, check_name, shard_pipeline
from pipelines.config import OutputConfig, StageResources, WriteResources, require
from pipelines.pipeline import StageDef, Units
from pipelines.plan import build_plan


class Count:
    """First stage: the plan's samples -> their indices."""

    def __call__(self, batch: dict) -> dict:
        return {"keys": batch["keys"], "values": [s["index"] for s in batch["samples"]]}


class Square:
    def __init__(self, power: int):
        self.power = power

    def __call__(self, batch: dict) -> dict:
        return {"keys": batch["keys"], "values": [v**self.power for v in batch["values"]]}


class Render:
    """Last stage: one text file and one manifest field per sample."""

    def __call__(self, batch: dict) -> dict:
        return {"keys": batch["keys"], "files": [{"square.txt": str(v).encode()} for v in batch["values"]],
                "fields": [{"value": v} for v in batch["values"]]}


def _cpu() -> StageResources:
    return StageResources(num_gpus=0, num_cpus=0.25, batch_size=4)


@dataclass(frozen=True)
class ToyStages:
    count: StageResources = field(default_factory=_cpu)
    square: StageResources = field(default_factory=_cpu)
    render: StageResources = field(default_factory=_cpu)
    write: WriteResources = field(default_factory=WriteResources)
    max_retries: int = 0


@dataclass(frozen=True)
class ToySpec:
    name: str
    output: OutputConfig
    kind: Literal["toy-squares"] = "toy-squares"
    count: int = 10
    power: int = 2
    stages: ToyStages = field(default_factory=ToyStages)
    cost: None = None

    def __post_init__(self):
        check_name(self)
        require(self.count > 0, "count", "a positive integer", self.count)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "power": self.power}


def plan(spec: ToySpec):
    return build_plan(["n"], images_per_prompt=spec.count, num_images=spec.count, seed=0,
                      samples_per_shard=spec.output.samples_per_shard)


def pipeline(spec: ToySpec, plan, faults=()):
    stages = [StageDef("count", Count, {}, spec.stages.count),
              StageDef("square", Square, {"power": spec.power}, spec.stages.square),
              StageDef("render", Render, {}, spec.stages.render)]
    return shard_pipeline(spec, plan, stages, faults, {"job": spec.name}, Units("square", "squares", "computed"), {})


KIND = JobKind("toy-squares", ToySpec, plan=plan, pipeline=pipeline,
               describe=lambda spec: [f"  squares of 0..{spec.count - 1}"], file_format=lambda spec: "txt")
