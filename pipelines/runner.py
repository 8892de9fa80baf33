"""Run a generation job: the driver loop that streams batches through the stage pools.

The shard is the unit of work from plan to storage. Each planned shard is cut into batches the
same way every time; its batches flow denoise -> decode as object references (the driver never
touches latents or pixels), and once all are decoded one write task streams the shard to storage
and commits it. Keeping shards whole makes shard names fixed (no gaps, no duplicates on rerun),
lets a rerun skip exactly the committed shards, and bounds memory by the shards in flight.
Ray Data was measured to mix and split planned shards across write tasks (see DESIGN.md).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import ray

from pipelines.accounting import RunAccounting
from pipelines.actors import StagePool, check_fits
from pipelines.config import ModelConfig, OutputConfig, SamplerConfig, StagesConfig
from pipelines.errors import StageFailure
from pipelines.plan import Plan, ShardPlan
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.webdataset_writer import write_shard
from pipelines.stages.decode import Decode
from pipelines.stages.denoise import Denoise


@dataclass(frozen=True)
class GenerationJob:
    name: str
    plan: Plan
    model: ModelConfig
    sampler: SamplerConfig
    decoder: str
    output: OutputConfig
    stages: StagesConfig
    identity: dict
    spec: dict  # the resolved spec, saved with the output (it holds no secrets)
    storage_options: dict = field(default_factory=dict)


@dataclass
class _Batch:
    shard: ShardPlan
    index: int
    samples: tuple
    attempts: int = 0


@dataclass
class _ActiveShard:
    plan: ShardPlan
    batches: int
    decoded: dict = field(default_factory=dict)  # batch index -> decoded result ref


def run_generation(job: GenerationJob, *, start_timeout_s: float = 900.0, progress: bool = True) -> dict:
    """Generate every planned sample not yet committed under job.output.url. Returns the run report."""
    layout = OutputLayout(job.output.url, job.storage_options)
    layout.claim(_job_record(job), job.plan)
    markers = layout.committed_markers()
    debris = layout.remove_debris(set(markers))
    layout.write_index(markers)
    todo = deque(s for s in job.plan.shards if s.name not in markers)
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    accounting = RunAccounting(
        run_id=run_id,
        planned=len(job.plan.samples),
        already_committed=sum(m["samples"] for m in markers.values()),
        to_generate=sum(len(s.samples) for s in todo),
    )
    if debris:
        accounting.note(f"removed {len(debris)} files of interrupted shard writes")
    if not todo:
        return _finish(layout, accounting, [], progress)

    pools = _make_pools(job)
    try:
        for pool in pools.values():
            pool.start()
        for pool in pools.values():
            pool.wait_ready(start_timeout_s)
        _stream(job, layout, todo, markers, pools, accounting, progress)
    finally:
        infos = [info for pool in pools.values() for info in pool.actor_infos()]
        for pool in pools.values():
            pool.shutdown()
    return _finish(layout, accounting, infos, progress)


def _make_pools(job: GenerationJob) -> dict[str, StagePool]:
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    d, c, w = job.stages.denoise, job.stages.decode, job.stages.write
    denoise = StagePool(
        "denoise",
        Denoise,
        {"model": job.model, "sampler": job.sampler},
        d.num_cpus,
        d.gpus_per_actor(has_gpus),
        d.min_actors,
        d.max_actors,
    )
    decode = StagePool(
        "decode",
        Decode,
        {
            "decoder": job.decoder,
            "model_reference": job.model.reference,
            "image_format": job.output.image_format,
            "quality": job.output.quality,
            "save_latents": job.output.save_latents,
            "dtype": job.model.dtype,
        },
        c.num_cpus,
        c.gpus_per_actor(has_gpus),
        c.min_actors,
        c.max_actors,
    )
    check_fits(
        {
            "denoise": (denoise.num_cpus, denoise.num_gpus, denoise.min_actors),
            "decode": (decode.num_cpus, decode.num_gpus, decode.min_actors),
            "write": (w.num_cpus, 0.0, 1),
        }
    )
    return {"denoise": denoise, "decode": decode}


def _stream(job, layout, todo, markers, pools, accounting, progress) -> None:
    denoise, decode = pools["denoise"], pools["decode"]
    write_cfg = job.stages.write
    writer = ray.remote(write_shard).options(num_cpus=write_cfg.num_cpus, max_retries=3, retry_exceptions=True)
    # Shards being computed at once: enough to keep every actor busy, few enough to bound memory.
    max_active = 2 * (denoise.max_actors + decode.max_actors) + write_cfg.concurrency
    sample_metadata = {
        "job": job.name,
        "model": job.model.reference,
        "decoder": job.decoder,
        "scheduler": job.sampler.scheduler,
        "steps": job.sampler.steps,
        "guidance_scale": job.sampler.guidance_scale,
        "negative_prompt": job.sampler.negative_prompt,
    }

    active: dict[str, _ActiveShard] = {}
    denoise_queue: deque[_Batch] = deque()
    decode_queue: deque[tuple[_Batch, ray.ObjectRef]] = deque()
    write_queue: deque[str] = deque()
    waiting: dict[ray.ObjectRef, tuple] = {}  # stats/marker ref -> (kind, batch or shard, refs...)
    writes_in_flight = 0
    last_progress = 0.0

    while todo or active:
        while todo and len(active) < max_active:
            shard = todo.popleft()
            batches = shard.batches(job.stages.denoise.batch_size)
            active[shard.name] = _ActiveShard(shard, len(batches))
            denoise_queue.extend(_Batch(shard, i, b) for i, b in enumerate(batches))

        denoise.scale_for(len(denoise_queue))
        while denoise_queue and denoise.free_slots() > 0:
            batch = denoise_queue.popleft()
            payload = [{"key": s.key, "index": s.index, "prompt": s.prompt, "seed": s.seed} for s in batch.samples]
            result_ref, stats_ref, member = denoise.submit(payload)
            waiting[stats_ref] = ("denoise", batch, result_ref, member)

        decode.scale_for(len(decode_queue))
        while decode_queue and decode.free_slots() > 0:
            batch, latents_ref = decode_queue.popleft()
            result_ref, stats_ref, member = decode.submit(latents_ref)
            waiting[stats_ref] = ("decode", batch, result_ref, member)

        while write_queue and writes_in_flight < write_cfg.concurrency:
            name = write_queue.popleft()
            shard = active[name]
            samples = [{"key": s.key, "index": s.index, "prompt": s.prompt, "seed": s.seed} for s in shard.plan.samples]
            decoded_refs = [shard.decoded[i] for i in range(shard.batches)]
            marker_ref = writer.remote(
                job.output.url, job.storage_options, name, samples, sample_metadata, job.output.image_format, *decoded_refs
            )
            waiting[marker_ref] = ("write", name, time.time())
            writes_in_flight += 1

        ready, _ = ray.wait(list(waiting), num_returns=1, timeout=1.0)
        for ref in ready:
            kind, *rest = waiting.pop(ref)
            if kind == "write":
                name, submitted_at = rest
                writes_in_flight -= 1
                marker = ray.get(ref)  # a write that failed after its retries fails the job here
                markers[name] = marker
                layout.write_index(markers)
                accounting.record("write", items=marker["samples"], busy_s=marker["write_seconds"], started_at=submitted_at)
                accounting.committed(marker["samples"])
                del active[name]
                continue
            batch, result_ref, member = rest
            pool = denoise if kind == "denoise" else decode
            pool.release(member)
            try:
                stats = ray.get(ref)
            except ray.exceptions.RayError as exc:
                _retry_or_fail(batch, kind, exc, denoise_queue, job.stages.max_retries, accounting)
                continue
            accounting.record(kind, **stats)
            if kind == "denoise":
                decode_queue.append((batch, result_ref))
            else:
                shard = active[batch.shard.name]
                shard.decoded[batch.index] = result_ref
                if len(shard.decoded) == shard.batches:
                    write_queue.append(batch.shard.name)

        now = time.monotonic()
        if progress and now - last_progress >= 5.0:
            print(accounting.progress_line(job.name), file=sys.stderr, flush=True)
            last_progress = now


def _retry_or_fail(batch: _Batch, stage: str, exc: Exception, denoise_queue, max_retries: int, accounting) -> None:
    """A failed batch starts over at denoise (its latents may be gone with a dead actor)."""
    batch.attempts += 1
    keys = f"{batch.samples[0].key}..{batch.samples[-1].key}"
    cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    accounting.failure(stage, keys, cause)
    if batch.attempts > max_retries:
        raise StageFailure(
            f"stage {stage!r} failed on shard {batch.shard.name} (samples {keys}) {batch.attempts} times; "
            f"last error: {cause}. Committed shards are kept; rerun to resume."
        )
    denoise_queue.appendleft(batch)


def _job_record(job: GenerationJob) -> dict:
    return {
        "format_version": 1,
        "name": job.name,
        "identity": {**job.identity, "plan_sha256": job.plan.digest()},
        "planned": len(job.plan.samples),
        "shards": len(job.plan.shards),
        "samples_per_shard": job.plan.samples_per_shard,
        "spec": job.spec,
    }


def _finish(layout: OutputLayout, accounting: RunAccounting, actors: list[dict], progress: bool) -> dict:
    report = accounting.report(actors)
    layout.write_run_report(accounting.run_id, report)
    if progress:
        print(accounting.progress_line("done"), file=sys.stderr, flush=True)
    return report
