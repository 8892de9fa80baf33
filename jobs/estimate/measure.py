"""Measure one batch per stage on the real actors, writing nothing to the job's output.

The spec's pools start exactly as a run starts them (pipelines/runner.py `make_pools`: its actors,
resources, models and `concurrency: auto` starting split; `wait_until_ready` says the ready counts).
Then two batches of the plan's first samples go through the chain one stage at a time, on one actor
per stage: a warm-up batch (the actor's first call carries lazy imports and caches; its time is
reported, not projected from) and the measured batch. Each batch's output is written as a shard by
the run's own write task (`shard_writer`) into a temporary folder, which times the write; the job's
output is never opened. Times are busy seconds measured inside the actor or task, as the run's
accounting measures them.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time

import ray

from jobs.estimate.timings import BatchTime, Measurement, StageTimes
from pipelines.actors import RayRuntime, StagePool
from pipelines.autoscale import rebalancer_for
from pipelines.config import StorageConfig
from pipelines.errors import LatentmillError
from pipelines.observe.phases import phase
from pipelines.pipeline import Pipeline
from pipelines.plan import ShardPlan, shard_name
from pipelines.runner import make_pools, shard_writer, wait_until_ready
from pipelines.scheduler import Batch, ShardWork, error_cause

BATCHES = ("warm-up", "measured")


class EstimateFailed(LatentmillError):
    """A stage (or the write) failed on an estimate's batch: exit 1, as a failed job."""


def measure(pipeline: Pipeline, connect, start_timeout_s: float) -> Measurement:
    """Start Ray (`connect`) and the pipeline's pools, time a warm-up and a measured batch per stage."""
    started = time.monotonic()
    connect()
    ray_s = time.monotonic() - started
    resources = ray.cluster_resources()
    cluster = {"CPU": resources.get("CPU", 0.0), "GPU": resources.get("GPU", 0.0)}
    pools = make_pools(pipeline, rebalancer_for(pipeline.stages, pipeline.gpus, cluster["GPU"]))
    phase("starting actors and loading models: " + ", ".join(
        f"{p.name} {p.target or p.min_actors} x ({p.num_cpus:g} CPU, {p.num_gpus:g} GPU)" for p in pools))
    scratch = tempfile.mkdtemp(prefix="latentmill-estimate-")
    try:
        started = time.monotonic()
        for pool in pools:
            pool.start()
        wait_until_ready(pools, start_timeout_s)
        actors_s = time.monotonic() - started
        times = _run_batches(pipeline, pools, scratch)
        stages = tuple(_stage_times(stage, pool, times[pool.name]) for stage, pool in zip(pipeline.stages, pools))
    finally:
        for pool in pools:
            pool.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    warmup, measured = times["write"]
    written = StageTimes("write", actors=pipeline.write.concurrency, batch_size=measured.items,
                         num_cpus=pipeline.write.num_cpus, num_gpus=0.0, warmup=warmup, measured=measured)
    return Measurement(stages + (written,), ray_s, actors_s, cluster)


def first_batches(plan, batch_size: int) -> list[tuple]:
    """The warm-up batch (the plan's first samples) and the measured one (the next); a plan shorter
    than two batches measures its last batch, which may overlap the first (nothing is kept)."""
    size = min(batch_size, len(plan))
    second = size if len(plan) >= 2 * size else len(plan) - size
    return [tuple(plan.sample(i) for i in range(start, start + size)) for start in (0, second)]


def _run_batches(pipeline: Pipeline, pools: list[StagePool], scratch: str) -> dict[str, list[BatchTime]]:
    """Each batch through every stage in turn, then written as its own shard under `scratch`."""
    write = shard_writer(_writing_to(pipeline, scratch), {})
    times: dict[str, list[BatchTime]] = {name: [] for name in pipeline.stage_names}
    plural = pipeline.units.plural
    batches = first_batches(pipeline.plan, pipeline.stages[0].resources.batch_size)
    for number, (label, samples) in enumerate(zip(BATCHES, batches)):
        work = ShardWork(ShardPlan(number, shard_name(number), samples), samples, repair=False)
        payload = Batch(work, samples).payload()
        for pool in pools:
            phase(f"estimate: {label} batch ({len(samples)} {plural}) through {pool.name}")
            payload, stats = _call(pool, payload, label)
            times[pool.name].append(BatchTime(stats["items"], stats["busy_s"]))
        phase(f"estimate: writing the {label} batch as a shard to a temporary folder")
        work.outputs.append(payload)
        marker = _get(write(work), f"the write of the {label} batch")
        times["write"].append(BatchTime(len(samples), marker["write_seconds"]))
    return times


def _writing_to(pipeline: Pipeline, scratch: str) -> Pipeline:
    """The pipeline with its output moved to `scratch`: the same write task, never the job's output."""
    return dataclasses.replace(pipeline, output=dataclasses.replace(pipeline.output, url=scratch, storage=StorageConfig()))


def _call(pool: StagePool, payload, label: str):
    """One call of the pool's least busy actor (the same one for both batches): (output ref, stats)."""
    result_ref, stats_ref, member = pool.submit(payload)
    try:
        return result_ref, _get(stats_ref, f"stage {pool.name} on the {label} batch", also=result_ref)
    finally:
        pool.release(member)


def _get(ref, what: str, also=None):
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        if also is not None:  # fetched so that Ray does not log the same error again as unhandled
            RayRuntime.discard(also)
        raise EstimateFailed(f"estimate: {what} failed: {error_cause(exc)}. Nothing was written to the output") from None


def _stage_times(stage, pool: StagePool, batches: list[BatchTime]) -> StageTimes:
    infos = pool.actor_infos()
    compiles = [i["compile_s"] for i in infos if i.get("compile_s") is not None]
    return StageTimes(
        stage.name,
        actors=pool.target if pool.target is not None else pool.max_actors,
        batch_size=stage.resources.batch_size,
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus,
        warmup=batches[0],
        measured=batches[1],
        load_s=max((i["load_seconds"] for i in infos), default=None),
        compile_s=max(compiles) if compiles else None,
    )
