"""Run a generation job: the driver loop that streams batches through the stage pools.

The shard is the unit of work from plan to storage. Each planned shard is cut into batches the
same way every time; its batches flow denoise -> decode as object references (the driver never
touches latents or pixels), and once all are decoded one write task streams the shard to storage
and commits it. Keeping shards whole makes shard names fixed (no gaps, no duplicates on rerun),
lets a rerun skip exactly the committed shards, and bounds memory by the shards in flight.
Ray Data was measured to mix and split planned shards across write tasks (see DESIGN.md).

A batch that fails is split into single samples, and each is retried up to `max_retries` times
from denoise; a sample that still fails is written to its shard's manifest as failed, counted in
the marker and the report, and can be retried later with `retry_failed`.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import ray

from pipelines.accounting import RunAccounting, pool_load, task_load
from pipelines.actors import StagePool, check_fits
from pipelines.config import CostConfig, ModelConfig, OutputConfig, SamplerConfig, StagesConfig
from pipelines.errors import OutputError
from pipelines.faults import Fault
from pipelines.plan import Plan, Sample, ShardPlan, shard_name
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.webdataset_writer import write_shard
from pipelines.stages.decode import Decode
from pipelines.stages.denoise import Denoise
from pipelines.tracking import run_listeners


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
    spec: dict  # the resolved spec, saved with the output (it names credentials, never holds them)
    faults: tuple[Fault, ...] = ()
    decoder_tiling: bool | int = False
    cost: CostConfig | None = None  # prices for the report's cost figures


@dataclass
class _ShardWork:
    """One shard in flight: the samples to generate now (all, or only failed ones on repair)."""

    shard: ShardPlan
    todo: tuple[Sample, ...]
    repair: bool
    pending: set[str] = field(default_factory=set)
    decoded: list = field(default_factory=list)  # refs of decoded batches
    failed: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.pending = {s.key for s in self.todo}


@dataclass
class _Batch:
    work: _ShardWork
    samples: tuple[Sample, ...]
    attempts: int = 0

    @property
    def keys(self) -> str:
        return self.samples[0].key if len(self.samples) == 1 else f"{self.samples[0].key}..{self.samples[-1].key}"


def run_generation(
    job: GenerationJob, *, start_timeout_s: float = 900.0, progress: bool = True, retry_failed: bool = False
) -> dict:
    """Generate every planned sample not yet committed under job.output.url. Returns the run report."""
    layout = OutputLayout(job.output.url, job.output.storage)
    layout.check_reachable()
    outcome = layout.claim(_job_record(job), job.plan, job.output.mode)
    markers = layout.committed_markers()
    debris = layout.remove_debris(set(markers))
    layout.write_index(markers)

    # Shards to do, as (shard index, keys to regenerate or None for all). Work items are built
    # when a shard is activated, so the driver's memory does not grow with the plan.
    todo: deque[tuple[int, frozenset | None]] = deque()
    to_generate = 0
    for index in range(job.plan.num_shards):
        marker = markers.get(shard_name(index))
        if marker is None:
            todo.append((index, None))
            to_generate += job.plan.shard_size(index)
        elif retry_failed and marker.get("failed"):
            todo.append((index, frozenset(marker["failed_keys"])))
            to_generate += marker["failed"]
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    accounting = RunAccounting(
        run_id=run_id,
        planned=len(job.plan),
        already_committed=sum(m["samples"] for m in markers.values()),
        to_generate=to_generate,
        job=job.name,
        prices=vars(job.cost) if job.cost is not None else None,
        listeners=run_listeners(layout, job.name, progress),
    )
    accounting.note(f"output: {outcome}")
    if debris:
        accounting.note(f"removed {len(debris)} files of interrupted shard writes")
    if not todo:
        return accounting.finish([])

    pools = _make_pools(job)
    accounting.pools_starting()
    try:
        for pool in pools.values():
            pool.start()
        for pool in pools.values():
            pool.wait_ready(start_timeout_s)
        ShardScheduler(job, layout, markers, pools, accounting).run(todo)
    except BaseException as exc:
        accounting.fail(exc, [info for pool in pools.values() for info in pool.actor_infos()])  # report kept
        raise
    finally:
        infos = [info for pool in pools.values() for info in pool.actor_infos()]
        for pool in pools.values():
            pool.shutdown()
    # Listeners (pipelines/tracking.py) write runs/RUN_ID.json and the job report, and end the live progress.
    return accounting.finish(infos)


def _make_pools(job: GenerationJob) -> dict[str, StagePool]:
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    d, c, w = job.stages.denoise, job.stages.decode, job.stages.write
    decode_kwargs = {
        "decoder": job.decoder,
        "model_reference": job.model.reference,
        "image_format": job.output.image_format,
        "quality": job.output.quality,
        "save_latents": job.output.save_latents,
        "dtype": job.model.dtype,
        "tiling": job.decoder_tiling,
        "batch_size": c.batch_size,
    }
    pools = {
        "denoise": StagePool("denoise", Denoise, {"model": job.model, "sampler": job.sampler}, d.num_cpus,
                             d.gpus_per_actor(has_gpus), d.min_actors, d.max_actors, faults=job.faults),
        "decode": StagePool("decode", Decode, decode_kwargs, c.num_cpus, c.gpus_per_actor(has_gpus),
                            c.min_actors, c.max_actors, faults=job.faults),
    }
    asks = {name: (p.num_cpus, p.num_gpus, p.min_actors) for name, p in pools.items()}
    check_fits({**asks, "write": (w.num_cpus, 0.0, 1)})
    return pools


class ShardScheduler:
    """The driver loop: keeps every pool fed from bounded queues and commits shards as they finish."""

    def __init__(self, job: GenerationJob, layout: OutputLayout, markers: dict, pools: dict, accounting):
        self.job, self.layout, self.markers, self.accounting = job, layout, markers, accounting
        self.denoise, self.decode = pools["denoise"], pools["decode"]
        write = job.stages.write
        self.write_concurrency = write.concurrency
        self.total_cpus = ray.cluster_resources().get("CPU", 0)
        self.write_cpus = write.num_cpus
        # Storage outages are retried inside the task (output.storage.timeout_s); Ray retries a
        # write whose worker died.
        self.writer = ray.remote(write_shard).options(num_cpus=write.num_cpus, max_retries=3)
        # Shards in flight: enough to keep every actor busy, few enough to bound memory.
        self.max_active = 2 * (self.denoise.max_actors + self.decode.max_actors) + write.concurrency
        self.sample_metadata = {
            "job": job.name,
            "model": job.model.reference,
            "decoder": job.decoder,
            "scheduler": job.sampler.scheduler,
            "steps": job.sampler.steps,
            "guidance_scale": job.sampler.guidance_scale,
            "negative_prompt": job.sampler.negative_prompt,
        }
        self.active: dict[str, _ShardWork] = {}
        self.denoise_queue: deque[_Batch] = deque()
        self.decode_queue: deque[tuple[_Batch, ray.ObjectRef]] = deque()
        self.write_queue: deque[_ShardWork] = deque()
        self.waiting: dict[ray.ObjectRef, tuple] = {}  # stats or marker ref -> what it is for
        self.writes_in_flight = 0

    def run(self, todo: deque[tuple[int, frozenset | None]]) -> None:
        while todo or self.active:
            while todo and len(self.active) < self.max_active:
                index, only = todo.popleft()
                shard = self.job.plan.shard(index)
                samples = shard.samples if only is None else tuple(s for s in shard.samples if s.key in only)
                work = _ShardWork(shard, samples, repair=only is not None)
                self.active[work.shard.name] = work
                size = self.job.stages.denoise.batch_size
                self.denoise_queue.extend(_Batch(work, work.todo[i : i + size]) for i in range(0, len(work.todo), size))
            self._submit()
            self.accounting.observe(_stage_loads(self))  # also drives progress, metrics, report flushes
            ready, _ = ray.wait(list(self.waiting), num_returns=1, timeout=1.0)
            for ref in ready:
                self._on_ready(ref)

    def _submit(self) -> None:
        self.denoise.scale_for(len(self.denoise_queue), self._spare_cpus())
        while self.denoise_queue and self.denoise.free_slots() > 0:
            batch = self.denoise_queue.popleft()
            result_ref, stats_ref, member = self.denoise.submit([s.as_dict() for s in batch.samples], batch.attempts)
            self.waiting[stats_ref] = ("denoise", batch, result_ref, member)
            self.accounting.submitted("denoise", len(batch.samples), ref=stats_ref)
        self.decode.scale_for(len(self.decode_queue), self._spare_cpus())
        while self.decode_queue and self.decode.free_slots() > 0:
            batch, latents_ref = self.decode_queue.popleft()
            result_ref, stats_ref, member = self.decode.submit(latents_ref, batch.attempts)
            self.waiting[stats_ref] = ("decode", batch, result_ref, member)
            self.accounting.submitted("decode", len(batch.samples), ref=stats_ref)
        while self.write_queue and self.writes_in_flight < self.write_concurrency:
            work = self.write_queue.popleft()
            marker_ref = self.writer.remote(
                self.job.output.url, self.job.output.storage, work.shard.name,
                [s.as_dict() for s in work.shard.samples], self.sample_metadata, self.job.output.image_format,
                work.failed, work.repair, *work.decoded,
            )
            self.waiting[marker_ref] = ("write", work, time.time())
            self.writes_in_flight += 1
            self.accounting.submitted("write", len(work.shard.samples))  # a write (re)writes the whole shard

    def _spare_cpus(self) -> float:
        return self.total_cpus - self.denoise.held_cpus() - self.decode.held_cpus() - self.write_cpus

    def _on_ready(self, ref: ray.ObjectRef) -> None:
        kind, *rest = self.waiting.pop(ref)
        if kind == "write":
            self._on_written(ref, *rest)
            return
        batch, result_ref, member = rest
        pool = self.denoise if kind == "denoise" else self.decode
        try:
            stats = ray.get(ref)
        except ray.exceptions.RayError as exc:
            pool.release(member, dead=isinstance(exc, ray.exceptions.RayActorError))
            _consume_error(result_ref)
            self._on_failure(batch, kind, exc)
            return
        pool.release(member)
        self.accounting.record(kind, **stats, ref=ref)
        if kind == "denoise":
            self.decode_queue.append((batch, result_ref))
            return
        work = batch.work
        work.decoded.append(result_ref)
        work.pending.difference_update(s.key for s in batch.samples)
        self._maybe_ready_to_write(work)

    def _on_failure(self, batch: _Batch, stage: str, exc: Exception) -> None:
        """Split a failed batch into single samples; a sample out of retries is recorded as failed.

        Retries start over at denoise: latents of a dead actor may be gone, and a NaN in decode
        is a denoise problem.
        """
        batch.attempts += 1
        cause = _cause(exc)
        self.accounting.failure(stage, batch.keys, cause)
        if len(batch.samples) > 1:
            self.denoise_queue.extendleft(_Batch(batch.work, (s,), batch.attempts) for s in reversed(batch.samples))
        elif batch.attempts <= self.job.stages.max_retries:
            self.denoise_queue.appendleft(batch)
        else:
            work = batch.work
            key = batch.samples[0].key
            work.failed.append({"key": key, "stage": stage, "error": cause, "attempts": batch.attempts})
            work.pending.discard(key)
            self._maybe_ready_to_write(work)

    def _maybe_ready_to_write(self, work: _ShardWork) -> None:
        if not work.pending:
            self.write_queue.append(work)

    def _on_written(self, ref, work: _ShardWork, submitted_at: float) -> None:
        self.writes_in_flight -= 1
        try:
            marker = ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise OutputError(
                f"writing shard {work.shard.name} failed: {_cause(exc)}. The {len(self.markers)} shards committed "
                "before are intact; rerun the same command to resume."
            ) from None
        self.markers[work.shard.name] = marker
        self.layout.write_index(self.markers)
        self.accounting.record("write", items=marker["samples"], busy_s=marker["write_seconds"], started_at=submitted_at)
        self.accounting.committed(len(work.todo) - marker["failed"], marker["failed"])
        del self.active[work.shard.name]


def _stage_loads(s: ShardScheduler) -> dict:
    """Each stage's load now, for the accounting's time integrals."""
    w = s.job.stages.write
    return {
        "denoise": pool_load(s.denoise, len(s.denoise_queue)),
        "decode": pool_load(s.decode, len(s.decode_queue)),
        "write": task_load(w.concurrency, s.writes_in_flight, len(s.write_queue), w.num_cpus),
    }


def _consume_error(ref: ray.ObjectRef) -> None:
    """Fetch a failed call's other output so Ray does not log its error again as unhandled."""
    try:
        ray.get(ref)
    except ray.exceptions.RayError:
        pass


def _cause(exc: BaseException) -> str:
    """The user-facing last line of a (remote) error."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[-1] if text else ''}".rstrip(": ")


def _job_record(job: GenerationJob) -> dict:
    return {
        "format_version": 1,
        "name": job.name,
        "identity": {**job.identity, "plan_sha256": job.plan.digest()},
        "planned": len(job.plan),
        "shards": job.plan.num_shards,
        "samples_per_shard": job.plan.samples_per_shard,
        "spec": job.spec,
    }
