"""`latentmill run --dry-run`: the resolved plan, in words, without starting anything."""

from __future__ import annotations

from jobs.kinds import kind_of
from jobs.local import check_faults, pipeline_for
from pipelines.autoscale import rebalancer_for
from pipelines.pipeline import Pipeline
from pipelines.plan import shard_name


def dry_run(spec, faults=()) -> str:
    """What `--dry-run` prints, after the checks a real run makes before it starts Ray (a kind's
    `describe` makes its own, e.g. train-decoder's pre-training checks of its data)."""
    pipeline = pipeline_for(spec, faults=faults) if kind_of(spec).pipeline is not None else None
    check_faults(spec, faults, pipeline)
    return describe(spec, pipeline)


def describe(spec, pipeline: Pipeline | None = None) -> str:
    """`pipeline`: the spec's (built here when not given)."""
    kind = kind_of(spec)
    if kind.pipeline is None:  # not a shard pipeline (train-decoder): what the kind says of itself
        return "\n".join([f"job {spec.name!r} ({spec.kind}) -> {spec.output.url}", *kind.describe(spec)])
    pipeline = pipeline if pipeline is not None else pipeline_for(spec)
    lines = [f"job {spec.name!r} ({spec.kind}) -> {spec.output.url} (mode {spec.output.mode})", *kind.describe(spec)]
    return "\n".join(lines + _plan_lines(pipeline, kind.file_format(spec)) + _stage_lines(pipeline)
                     + _auto_lines(pipeline))


def _plan_lines(pipeline: Pipeline, file_format: str) -> list[str]:
    plan = pipeline.plan
    if not len(plan):
        return ["  samples: 0"]
    first, last = plan.sample(0), plan.sample(len(plan) - 1)
    seeds = f", seeds {first.seed}..{last.seed}" if hasattr(first, "seed") else ""  # input plans have no seeds
    return [f"  samples: {len(plan)} (keys {first.key}..{last.key}{seeds})",
            f"  shards: {plan.num_shards} of up to {plan.samples_per_shard} samples "
            f"({shard_name(0)}..{shard_name(plan.num_shards - 1)}, {file_format})"]


def _stage_lines(pipeline: Pipeline) -> list[str]:
    lines = ["  stages:"]
    for stage in pipeline.stages:
        r = stage.resources
        concurrency = ("auto" if r.concurrency == "auto" else r.min_actors if r.min_actors == r.max_actors
                       else f"{r.min_actors}..{r.max_actors}")
        lines.append(f"    {stage.name:8s} actors={concurrency} num_gpus={r.num_gpus} num_cpus={r.num_cpus} "
                     f"batch_size={r.batch_size}")
    w = pipeline.write
    lines.append(f"    {'write':8s} concurrent shards={w.concurrency} num_cpus={w.num_cpus}")
    return lines


def _auto_lines(pipeline: Pipeline) -> list[str]:
    """The `concurrency: auto` starting split, the line the run prints, when the GPU budget is known
    without a cluster (`stages.gpus`); else where the split will come from."""
    if not any(stage.resources.concurrency == "auto" for stage in pipeline.stages):
        return []
    if pipeline.gpus is None:
        split = ("is even" if pipeline.auto_start is None else f"is chosen from {pipeline.auto_start.source}")
        return [f"  concurrency auto: the starting split of the cluster's GPUs {split} once they are known "
                "(stages.gpus sets the budget and shows the split here)"]
    # A cluster with the budget's GPUs: `num_gpus: auto` actors then hold one GPU each (a CPU cluster
    # would give them none, and count the budget as actors: the same split).
    rebalancer = rebalancer_for(pipeline.stages, pipeline.gpus, pipeline.gpus, pipeline.auto_start)
    return ["  " + rebalancer.describe_start()]
