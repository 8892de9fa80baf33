"""`latentmill run --dry-run`: the resolved plan, in words, without starting anything."""

from __future__ import annotations

from pipelines.pipeline import Pipeline
from pipelines.plan import shard_name


def describe(spec, pipeline: Pipeline) -> str:
    plan = pipeline.plan
    lines = [f"job {spec.name!r} ({spec.kind}) -> {spec.output.url} (mode {spec.output.mode})"]
    if hasattr(spec, "sampler"):
        s = spec.sampler
        lines += [
            f"  model: {spec.model.family} {spec.model.reference} ({spec.model.dtype}); decoder: {spec.decoder}",
            f"  sampler: {s.scheduler}, {s.steps} steps, guidance {s.guidance_scale}, {s.width}x{s.height}",
        ]
    if hasattr(spec, "video"):
        v = spec.video
        lines += [
            f"  model: {spec.model.family} {spec.model.reference} ({spec.model.dtype}); decoder: {spec.decoder}",
            f"  clips: {v.frames} frames at {v.fps} fps, {v.width}x{v.height}, {v.steps} steps, motion bucket "
            f"{v.motion_bucket_id}, decode chunk {v.decode_chunk_size or 'all'} frames",
        ]
    if hasattr(spec, "input"):
        source = spec.input.url if getattr(spec.input, "url", None) is not None else f"builtin: {spec.input.builtin}"
        lines.append(f"  input: {source} ({spec.input.format})")
    if len(plan):
        first, last = plan.sample(0), plan.sample(len(plan) - 1)
        seeds = f", seeds {first.seed}..{last.seed}" if hasattr(first, "seed") else ""
        lines.append(f"  samples: {len(plan)} (keys {first.key}..{last.key}{seeds})")
        lines.append(f"  shards: {plan.num_shards} of up to {plan.samples_per_shard} samples "
                     f"({shard_name(0)}..{shard_name(plan.num_shards - 1)}, {getattr(spec.output, 'image_format', 'mp4')})")
    else:
        lines.append("  samples: 0")
    lines.append("  stages:")
    for stage in pipeline.stages:
        r = stage.resources
        concurrency = ("auto" if r.concurrency == "auto" else r.min_actors if r.min_actors == r.max_actors
                       else f"{r.min_actors}..{r.max_actors}")
        lines.append(f"    {stage.name:8s} actors={concurrency} num_gpus={r.num_gpus} num_cpus={r.num_cpus} "
                     f"batch_size={r.batch_size}")
    w = pipeline.write
    lines.append(f"    {'write':8s} concurrent shards={w.concurrency} num_cpus={w.num_cpus}")
    return "\n".join(lines)
