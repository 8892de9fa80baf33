"""`latentmill run --dry-run`: the resolved plan, in words, without starting anything."""

from __future__ import annotations

from jobs.spec import JobSpec
from pipelines.plan import Plan, shard_name


def describe(spec: JobSpec, plan: Plan) -> str:
    first, last = plan.sample(0), plan.sample(len(plan) - 1)
    s = spec.sampler
    lines = [
        f"job {spec.name!r} ({spec.kind}) -> {spec.output.url} (mode {spec.output.mode})",
        f"  model: {spec.model.family} {spec.model.reference} ({spec.model.dtype}); decoder: {spec.decoder}",
        f"  sampler: {s.scheduler}, {s.steps} steps, guidance {s.guidance_scale}, {s.width}x{s.height}",
        f"  samples: {len(plan)} (keys {first.key}..{last.key}, seeds {first.seed}..{last.seed})",
        f"  shards: {plan.num_shards} of up to {plan.samples_per_shard} samples "
        f"({shard_name(0)}..{shard_name(plan.num_shards - 1)}, {spec.output.image_format})",
        "  stages:",
    ]
    for name in ("denoise", "decode"):
        r = getattr(spec.stages, name)
        concurrency = r.min_actors if r.min_actors == r.max_actors else f"{r.min_actors}..{r.max_actors}"
        lines.append(
            f"    {name:8s} actors={concurrency} num_gpus={r.num_gpus} num_cpus={r.num_cpus} batch_size={r.batch_size}"
        )
    w = spec.stages.write
    lines.append(f"    {'write':8s} concurrent shards={w.concurrency} num_cpus={w.num_cpus}")
    return "\n".join(lines)
