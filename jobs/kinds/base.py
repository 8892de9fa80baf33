"""What a job kind provides (`JobKind`), and the pieces every shard-writing kind shares.

A kind is one file in jobs/kinds/: its spec class, its stages section, its plan and its pipeline
(or its own `run`, for a kind that is not a shard pipeline). Callers (the spec loader, `run`,
`--dry-run`, nightly upkeep) ask the kind and never switch on its name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from jobs.profiles import starting_times
from pipelines.config import StageResources, require
from pipelines.faults import Fault
from pipelines.models.fingerprint import model_fingerprint
from pipelines.models.random_models import NOISE_NOTE, is_random_model
from pipelines.pipeline import Pipeline, StageDef, Units


def _no_check(spec) -> None:
    return None


def _no_lines(spec) -> list[str]:
    return []


def _image_format(spec) -> str:
    return spec.output.image_format


@dataclass(frozen=True)
class Comparison:
    """What `latentmill browse` shows beside a sample's own image. `other` is "latents" (the sample's
    latents decoded by the model's VAE) or "input" (the same key's image in the output the job read);
    `captions` name the two images in page order, the other image first when `other_first`."""

    other: str
    captions: tuple[str, str]
    other_first: bool = False


@dataclass(frozen=True)
class JobKind:
    name: str
    spec_class: type
    plan: Callable | None = None  # spec -> plan (shard-writing kinds)
    pipeline: Callable | None = None  # (spec, plan, faults) -> Pipeline
    # A kind that is not a shard pipeline runs itself: (spec, progress=, connect=, wait=) -> report.
    run: Callable | None = None
    check: Callable = _no_check  # spec -> None: checks that need the outside world (files, decoders)
    describe: Callable = _no_lines  # spec -> the kind's own lines of `latentmill run --dry-run`
    summary: Callable | None = None  # (spec, report) -> the line `run` prints; None: the shard summary
    file_format: Callable = _image_format  # spec -> the shards' sample format, for `--dry-run`
    # Takes {date} (run_date) and the nightly upkeep after a run: verify, latest.json, retention, notify.
    dated: bool = False
    comparison: Comparison | None = None  # the second image of `latentmill browse`'s sample page


def shard_pipeline(spec, plan, stages: list[StageDef], faults: tuple[Fault, ...], sample_metadata: dict,
                   units: Units, weights: dict, gpus: int | None = None) -> Pipeline:
    """The `Pipeline` of a kind that writes shards: its stages, then the engine's write step."""
    model = getattr(spec, "model", None)  # a kind may have no model (the tests' toy kind computes squares)
    if model is not None and is_random_model(model.reference):
        sample_metadata = {**sample_metadata, "weights": NOISE_NOTE}  # every sample says it is noise
    return Pipeline(
        name=spec.name, kind=spec.kind, plan=plan, stages=tuple(stages), output=spec.output, write=spec.stages.write,
        identity={**spec.identity(), "weights": weights}, spec=spec.to_dict(),
        sample_metadata=sample_metadata, max_retries=spec.stages.max_retries, faults=faults, cost=spec.cost,
        gpus=gpus, auto_start=starting_times(spec.stages), units=units,
    )


def model_weights(spec) -> dict:
    """Which weights the spec's model reference means now (pipelines/models/fingerprint.py)."""
    return {"model": model_fingerprint(spec.model.reference)}


# How fast, not what: left out of the identity, so an output resumes with them switched on or off.
SPEED_ONLY_MODEL_FIELDS = ("channels_last", "compile")


def model_identity(model) -> dict:
    """The model section as far as it decides the samples' content."""
    return {k: v for k, v in dataclasses.asdict(model).items() if k not in SPEED_ONLY_MODEL_FIELDS}


def check_chunking(first: str, first_size: int, later: str, later_size: int) -> None:
    # Batches are cut by the first stage; a later stage works through each batch in chunks of its
    # own batch_size (a memory bound), so it cannot be larger.
    require(
        later_size <= first_size,
        f"{later}.batch_size",
        f"at most stages.{first}.batch_size ({first_size}): each {first} batch is processed in chunks of this size",
        later_size,
    )


def check_name(spec) -> None:
    require(bool(spec.name.strip()), "name", "a non-empty name", spec.name)


def output_identity(spec) -> dict:
    output = dataclasses.asdict(spec.output)
    return {k: output[k] for k in ("image_format", "quality", "samples_per_shard", "save_latents")}


def read_images_kwargs(source, image) -> dict:
    """ReadImages' arguments for an image source (InputConfig or ConditioningInput): its storage and
    pixel rules (input.background, input.max_pixels)."""
    return {"image": image, "storage": source.storage, "background": source.background, "max_pixels": source.max_pixels}


def read_resources(batch_size: int) -> StageResources:
    # Reading is CPU work: no GPU, a quarter of a core.
    return StageResources(num_gpus=0, num_cpus=0.25, batch_size=batch_size)
