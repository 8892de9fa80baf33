"""Measure one batch per stage on the real actors, writing nothing to the job's output.

The spec's pools start exactly as a run starts them (pipelines/runner.py `make_pools`: its actors,
resources, models and `concurrency: auto` starting split; `wait_until_ready` says the ready counts).
Then two batches of the plan's first samples go through the chain on one actor per stage: a warm-up
batch through every stage in turn (an actor's first call carries lazy imports and caches; its time is
reported, not projected from), then the measured batches of all stages at the same time (stage 0 on
the next samples, every other stage on the warm-up output of the stage before it), so that each stage
shares the machine with the others as it does in a run. Each batch leaving the last stage is written
as a shard by the run's own write task (`shard_writer`) into a temporary folder, which times the
write; the job's output is never opened. Times are busy seconds measured inside the actor or task, as
the run's accounting measures them.
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
from pipelines.runner import make_pools, shard_writer, starting_line, wait_until_ready
from pipelines.scheduler import Batch, ShardWork, error_cause


class EstimateFailed(LatentmillError):
    """A stage (or the write) failed on an estimate's batch: exit 1, as a failed job."""


def measure(pipeline: Pipeline, connect, start_timeout_s: float) -> Measurement:
    """Start Ray (`connect`) and the pipeline's pools, time a warm-up and a measured batch per stage."""
    started = time.monotonic()
    connect()
    ray_s = time.monotonic() - started
    resources = ray.cluster_resources()
    cluster = {"CPU": resources.get("CPU", 0.0), "GPU": resources.get("GPU", 0.0)}
    rebalancer = rebalancer_for(pipeline.stages, pipeline.gpus, cluster["GPU"], pipeline.auto_start)
    if rebalancer is not None:
        phase(rebalancer.describe_start())
    pools = make_pools(pipeline, rebalancer)
    phase(starting_line(pools))
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
    """The warm-up batch through every stage in turn (its outputs are the measured batches' inputs),
    then the measured batches of all stages at once, as a run runs its stages: each measured time
    includes waiting for the cores (and GPUs) the other stages use. Each batch leaving the last stage
    is written as a shard under `scratch`."""
    write = shard_writer(_writing_to(pipeline, scratch), {})
    times: dict[str, list[BatchTime]] = {name: [] for name in pipeline.stage_names}
    warmup, measured = first_batches(pipeline.plan, pipeline.stages[0].resources.batch_size)
    outputs, payload = [], _payload(warmup)
    for pool in pools:
        phase(f"estimate: warm-up batch ({len(warmup)} {pipeline.units.plural}) through {pool.name}")
        [(payload, stats)] = _call_together([pool], [payload], "warm-up")
        outputs.append(payload)
        times[pool.name].append(_batch_time(stats))
    # The writes stay apart from the measured batches: the warm-up write is its task's first call,
    # which imports the shard writer's libraries (a burst of CPU a steady run does not have), and the
    # measured write needs the last stage's measured output.
    _write(write, 0, warmup, outputs[-1], "warm-up", times)
    # Stage 0 takes the next samples; every other stage the warm-up output of the stage before it.
    inputs = [(measured, _payload(measured))] + [(warmup, ref) for ref in outputs[:-1]]
    phase(f"estimate: measured batches through {', '.join(p.name for p in pools)} at the same time, "
          "sharing the machine as in a run")
    results = _call_together(pools, [batch for _, batch in inputs], "measured")
    for pool, (_, stats) in zip(pools, results):
        times[pool.name].append(_batch_time(stats))
    _write(write, 1, inputs[-1][0], results[-1][0], "measured", times)
    return times


def _payload(samples: tuple) -> dict:
    return Batch(_work(0, samples), samples).payload()


def _work(number: int, samples: tuple) -> ShardWork:
    return ShardWork(ShardPlan(number, shard_name(number), samples), samples, repair=False)


def _batch_time(stats: dict) -> BatchTime:
    return BatchTime(stats["items"], stats["busy_s"], started_at=stats["started_at"])


def _write(write, number: int, samples: tuple, output_ref, label: str, times: dict) -> None:
    """The last stage's output of `samples` written as shard `number` by the run's write task."""
    phase(f"estimate: writing the {label} batch as a shard to a temporary folder")
    work = _work(number, samples)
    work.outputs.append(output_ref)
    marker = _get(write(work), f"the write of the {label} batch")
    times["write"].append(BatchTime(len(samples), marker["write_seconds"]))


def _writing_to(pipeline: Pipeline, scratch: str) -> Pipeline:
    """The pipeline with its output moved to `scratch`: the same write task, never the job's output."""
    return dataclasses.replace(pipeline, output=dataclasses.replace(pipeline.output, url=scratch, storage=StorageConfig()))


def _call_together(pools: list[StagePool], payloads: list, label: str) -> list[tuple]:
    """One call per pool on its least busy actor, all submitted before any is awaited:
    [(output ref, stats)] in pool order; a failure names its stage."""
    calls = [pool.submit(payload) for pool, payload in zip(pools, payloads)]
    try:
        return [(result_ref, _get(stats_ref, f"stage {pool.name} on the {label} batch", also=result_ref))
                for pool, (result_ref, stats_ref, _) in zip(pools, calls)]
    finally:
        for pool, (_, _, member) in zip(pools, calls):
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
