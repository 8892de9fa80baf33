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
import signal
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import ray

from pipelines.accounting import RunAccounting, pool_load, task_load
from pipelines.actors import StagePool, check_fits
from pipelines.config import CostConfig, ModelConfig, OutputConfig, SamplerConfig, StagesConfig
from pipelines.errors import Interrupted, OutputError
from pipelines.faults import Fault
from pipelines.plan import Plan, Sample, ShardPlan, shard_name
from pipelines.sinks.integrity import damaged_shards
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.lease import OutputLease, describe_holder
from pipelines.sinks.webdataset_writer import write_shard
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
    job: GenerationJob,
    *,
    connect: Callable[[], None] = lambda: None,
    start_timeout_s: float = 900.0,
    progress: bool = True,
    retry_failed: bool = False,
    check_full: bool = False,
    wait: bool = False,
) -> dict:
    """Generate every planned sample not yet committed under job.output.url. Returns the run report.

    Everything that changes the output happens under its lease (one driver per output; `wait`:
    wait for a driver that holds it instead of refusing). Ray is connected to (`connect`) only when
    there is work: checking a finished output needs none.
    """
    layout = OutputLayout(job.output.url, job.output.storage)
    layout.check_reachable()
    layout.refuse_foreign_data()
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    with OutputLease(layout, run_id, job.output.lease_ttl_s).acquire(wait=wait) as lease:
        return _run_under_lease(job, layout, lease, connect, start_timeout_s, progress, retry_failed, check_full)


def _run_under_lease(job, layout, lease, connect, start_timeout_s, progress, retry_failed, check_full) -> dict:
    outcome = layout.claim(_job_record(job), job.plan, job.output.mode)
    markers = layout.committed_markers()
    notes = [f"output: {outcome}"]
    if lease.taken_over:
        notes.append(f"took over the expired lease of {describe_holder(lease.taken_over)}")
    # A committed shard whose files no longer match its marker is generated again, whole.
    for name, why in damaged_shards(layout, markers, full=check_full).items():
        notes.append(f"shard {name} is generated again: {why}")
        print(f"latentmill: shard {name} is generated again: {why}", file=sys.stderr)
        layout.uncommit(name)
        del markers[name]
    debris = layout.remove_debris(markers)
    if debris:
        notes.append(f"removed {len(debris)} files of interrupted shard writes or replaced repairs")
    layout.write_index(markers)

    todo, to_generate = _shards_to_do(job.plan, markers, retry_failed)
    changed = bool(todo or debris or lease.taken_over or len(notes) > 1)
    accounting = RunAccounting(
        run_id=lease.run_id,
        planned=len(job.plan),
        already_committed=sum(m["samples"] for m in markers.values()),
        to_generate=to_generate,
        job=job.name,
        prices=vars(job.cost) if job.cost is not None else None,
        # A run with nothing to do leaves no run report, so checking a finished output changes nothing.
        listeners=run_listeners(layout, job.name, progress) if changed else [],
    )
    for note in notes:
        accounting.note(note)
    if not todo:
        return accounting.finish([])

    connect()
    pools = _make_pools(job)
    accounting.pools_starting()
    interrupts = _Interrupts()
    infos: list[dict] = []
    try:
        with interrupts:
            for pool in pools.values():
                pool.start()
            for pool in pools.values():
                pool.wait_ready(start_timeout_s)
            _check_devices(layout, pools)
            scheduler = ShardScheduler(job, layout, markers, pools, accounting)
            interrupts.scheduler = scheduler
            lease.on_lost = scheduler.stop
            scheduler.run(todo)
            interrupts.scheduler = None
            lease.check()
    except KeyboardInterrupt:
        interrupts.count += 1
    except BaseException as exc:
        accounting.fail(exc, [info for pool in pools.values() for info in pool.actor_infos()])  # report kept
        raise
    finally:
        infos = [info for pool in pools.values() for info in pool.actor_infos()]
        for pool in pools.values():
            pool.shutdown()
    if interrupts.count:
        return _interrupted(job, layout, accounting, infos)
    layout.remove_debris(layout.committed_markers())  # the files that repairs replaced
    # Listeners (pipelines/tracking.py) write runs/RUN_ID.json and the job report, and end the live progress.
    return accounting.finish(infos)


def _shards_to_do(plan: Plan, markers: dict, retry_failed: bool) -> tuple[deque, int]:
    """(index, keys to regenerate or None for all) per shard to do, and the samples to generate.
    Work items are built when a shard is activated, so the driver's memory does not grow with the plan."""
    todo: deque[tuple[int, frozenset | None]] = deque()
    to_generate = 0
    for index in range(plan.num_shards):
        marker = markers.get(shard_name(index))
        if marker is None:
            todo.append((index, None))
            to_generate += plan.shard_size(index)
        elif retry_failed and marker.get("failed"):
            todo.append((index, frozenset(marker["failed_keys"])))
            to_generate += marker["failed"]
    return todo, to_generate


def _check_devices(layout: OutputLayout, pools: dict) -> None:
    """The device kind each stage ran on is part of what decides the bytes: a resume must match it."""
    devices = {name: sorted({info["device"] for info in pool.actor_infos()}) for name, pool in pools.items()}
    layout.check_devices(devices)


def _interrupted(job: GenerationJob, layout: OutputLayout, accounting: RunAccounting, infos: list) -> dict:
    """Ctrl-C: the shards committed (in-flight writes drained or abandoned as debris) go to the index."""
    markers = layout.committed_markers()
    layout.remove_debris(markers)
    layout.write_index(markers)
    accounting.status = "interrupted"
    accounting.finish(infos)
    samples = sum(m["samples"] for m in markers.values())
    raise Interrupted(
        f"interrupted: {len(markers)}/{job.plan.num_shards} shards ({samples}/{len(job.plan)} samples) are committed "
        f"in {job.output.url}; rerun the same command to resume"
    )


class _Interrupts:
    """While active: the first Ctrl-C asks the scheduler to stop (in-flight writes finish), a second
    one, or one before the scheduler runs, abandons the run at once. Main thread only."""

    def __init__(self):
        self.count = 0
        self.scheduler: ShardScheduler | None = None
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.count == 1 and self.scheduler is not None:
            self.scheduler.stop()
        else:
            raise KeyboardInterrupt

    def __enter__(self) -> "_Interrupts":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _make_pools(job: GenerationJob) -> dict[str, StagePool]:
    # Imported here: a run with nothing to do needs neither torch nor the models.
    from pipelines.stages.decode import Decode
    from pipelines.stages.denoise import Denoise

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
        self.stop_requested = False

    def stop(self) -> None:
        """Submit nothing more; `run` returns once the writes in flight are committed (Ctrl-C)."""
        self.stop_requested = True

    def run(self, todo: deque[tuple[int, frozenset | None]]) -> None:
        while (todo or self.active) and not (self.stop_requested and not self.writes_in_flight):
            while not self.stop_requested and todo and len(self.active) < self.max_active:
                index, only = todo.popleft()
                shard = self.job.plan.shard(index)
                samples = shard.samples if only is None else tuple(s for s in shard.samples if s.key in only)
                work = _ShardWork(shard, samples, repair=only is not None)
                self.active[work.shard.name] = work
                size = self.job.stages.denoise.batch_size
                self.denoise_queue.extend(_Batch(work, work.todo[i : i + size]) for i in range(0, len(work.todo), size))
            if not self.stop_requested:
                self._submit()
            self.accounting.observe(_stage_loads(self))  # also drives progress, metrics, report flushes
            if not self.waiting:  # ray.wait([]) returns at once: do not spin while actors start
                time.sleep(0.2)
                continue
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
                work.failed, self.markers[work.shard.name] if work.repair else None, self.job.faults, *work.decoded,
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
