"""What a job kind hands the engine: a plan, a chain of stages and what the sink needs to know.

A job kind (jobs/kinds/) is a small function from its spec to a `Pipeline`; the engine
(pipelines/runner.py, pipelines/scheduler.py) runs any chain of any length the same way.

The batch contract between stages: every stage is called with one dict holding `keys` (the samples
of the batch, in order) and returns one dict holding the `keys` it produced. The first stage gets
`{"keys", "samples"}` (the plan's sample dicts). The last stage returns, per key, the files of the
sample and its fields:
    {"keys": [...], "files": [{"png": b"...", "latent.npy": b"..."}, ...], "fields": [{...}, ...]}
The first file of each sample is its primary file (image, clip or latents); `fields` go to the
sample's manifest row and its `.json`. A stage may drop a sample whose *input* is bad by listing it
in `rejected` ({key: reason}); the engine carries rejections down the chain to the manifest, and
`input_facts` ({key: {column: value}}, what reading an input found) to the sample's row and `.json`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from pipelines.autoscale import StartingTimes
from pipelines.config import CostConfig, OutputConfig, StageResources, WriteResources
from pipelines.faults import Fault


@dataclass(frozen=True)
class StageDef:
    """One stage of a chain: its name, its class and constructor arguments, and its resources.

    `cls` may be the class or its "module:Class" path: with a path the driver never imports the
    stage's model code (torch, diffusers); only the actors that run it do.
    """

    name: str
    cls: type | str
    kwargs: dict
    resources: StageResources

    def build(self):
        """An instance of the stage, in this process."""
        return stage_class(self.cls)(**self.kwargs)


def stage_class(cls: type | str) -> type:
    if isinstance(cls, str):
        module, _, name = cls.partition(":")
        return getattr(importlib.import_module(module), name)
    return cls


@dataclass(frozen=True)
class Units:
    """How progress lines and reports name a kind's items; the engine itself never names them.

    `per_item` holds extra figures a report multiplies the item rate by, e.g. {"frames": 14} for
    clips of 14 frames (frames/s = clips/s * 14).
    """

    singular: str = "sample"
    plural: str = "samples"
    verb: str = "processed"  # past tense: "128 images generated"
    per_item: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Pipeline:
    name: str
    kind: str
    plan: object  # pipelines.plan.Plan or any plan with the same protocol
    stages: tuple[StageDef, ...]
    output: OutputConfig
    write: WriteResources
    identity: dict
    spec: dict  # the resolved spec, saved with the output (it names credentials, never holds them)
    # Fields every sample's .json gets (job, model, decoder, ...).
    sample_metadata: dict = field(default_factory=dict)
    max_retries: int = 2
    faults: tuple[Fault, ...] = ()
    cost: CostConfig | None = None  # prices for the report's cost figures
    gpus: int | None = None  # GPUs the `concurrency: auto` stages share (None: the cluster's)
    auto_start: StartingTimes | None = None  # the `concurrency: auto` first split's times (None: even)
    units: Units = Units()

    def __post_init__(self):
        if not self.stages:
            raise ValueError("a pipeline needs at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names) or "write" in names:
            raise ValueError(f"stage names must be unique and not 'write': {names}")

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages) + ("write",)
