"""`latentmill run --dry-run`: the resolved plan, in words, without starting anything."""

from __future__ import annotations

from jobs.local import check_faults, pipeline_for
from pipelines.errors import ConfigError
from pipelines.pipeline import Pipeline
from pipelines.plan import shard_name


def dry_run(spec, faults=()) -> str:
    """What `--dry-run` prints, after the checks a real run makes before it starts Ray."""
    if spec.kind == "train-decoder":  # Ray Train, not a pipeline: its checks read the training data
        from jobs.train import check_before_training  # imports torch: not for the other kinds' dry runs

        if faults:
            raise ConfigError("--inject-fault", "", detail="a train-decoder job has no stages to inject faults into")
        return describe_training(spec, check_before_training(spec))
    pipeline = pipeline_for(spec, faults=faults)
    check_faults(pipeline, faults)
    return describe(spec, pipeline)


def describe_training(spec, prepared: dict) -> str:
    o, s = spec.optim, spec.scaling
    start = f"from {spec.init_weights}" if spec.init_weights else "from scratch"
    return "\n".join([
        f"job {spec.name!r} (train-decoder) -> {spec.output.url}",
        f"  decoder: {spec.architecture}{' (tiny)' if spec.tiny else ''} {start}, target {spec.target}",
        f"  data: {', '.join(spec.data.urls)}: {prepared['train_samples']} training and "
        f"{prepared['held_out_samples']} held-out samples in {len(prepared['shards'])} shards",
        f"  optim: {o.steps} steps, batch {o.batch_size} per worker, lr {o.lr}, precision {o.precision}",
        f"  loss: {spec.loss.pixel} x{spec.loss.pixel_weight}, lpips x{spec.loss.lpips_weight}, "
        f"adversarial x{spec.loss.adversarial_weight}",
        f"  workers: {s.num_workers} (use_gpu {s.use_gpu}, {s.cpus_per_worker} CPUs each); checkpoints every "
        f"{spec.checkpoints.every_steps} steps to {spec.checkpoint_url}",
    ])


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
