"""Run a pipeline: claim its output, start its stage pools, stream its shards, commit, report.

Any job kind runs here the same way: the kind (jobs/kinds.py) builds a `Pipeline` (a plan, a chain
of stages, a sink), and this module does what every kind needs: output claim and resume by commit
markers, pools pinned to their resources, the shard scheduler (pipelines/scheduler.py), the shard
writer, and the run's accounting and report.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import deque

import ray

from pipelines.accounting import RunAccounting
from pipelines.actors import RayRuntime, StagePool, check_fits
from pipelines.autoscale import rebalancer_for
from pipelines.pipeline import Pipeline
from pipelines.plan import shard_name
from pipelines.scheduler import ShardScheduler, ShardWork
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.webdataset_writer import write_shard
from pipelines.tracking import run_listeners


def run_pipeline(
    pipeline: Pipeline, *, start_timeout_s: float = 900.0, progress: bool = True, retry_failed: bool = False
) -> dict:
    """Run every planned sample not yet committed under pipeline.output.url. Returns the run report."""
    layout = OutputLayout(pipeline.output.url, pipeline.output.storage)
    layout.check_reachable()
    outcome = layout.claim(_job_record(pipeline), pipeline.plan, pipeline.output.mode)
    markers = layout.committed_markers()
    debris = layout.remove_debris(set(markers))
    layout.write_index(markers)

    # Shards to do, as (shard index, keys to regenerate or None for all). Work items are built
    # when a shard is activated, so the driver's memory does not grow with the plan.
    plan = pipeline.plan
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
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    accounting = RunAccounting(
        run_id=run_id,
        planned=len(plan),
        already_committed=sum(m["samples"] for m in markers.values()),
        to_generate=to_generate,
        job=pipeline.name,
        prices=vars(pipeline.cost) if pipeline.cost is not None else None,
        listeners=run_listeners(layout, pipeline.name, progress),
    )
    accounting.note(f"output: {outcome}")
    if debris:
        accounting.note(f"removed {len(debris)} files of interrupted shard writes")
    if not todo:
        return accounting.finish([])

    rebalancer = rebalancer_for(pipeline.stages, pipeline.gpus, ray.cluster_resources().get("GPU", 0))
    pools = make_pools(pipeline, rebalancer)
    accounting.pools_starting()
    infos: list[dict] = []
    try:
        for pool in pools:
            pool.start()
        for pool in pools:
            pool.wait_ready(start_timeout_s)

        def on_commit(name: str, marker: dict) -> None:
            markers[name] = marker
            layout.write_index(markers)

        scheduler = ShardScheduler(
            plan, pools, RayRuntime(shard_writer(pipeline)), accounting,
            batch_size=pipeline.stages[0].resources.batch_size, max_retries=pipeline.max_retries,
            write_concurrency=pipeline.write.concurrency, write_cpus=pipeline.write.num_cpus,
            committed=len(markers), on_commit=on_commit, rebalancer=rebalancer,
        )
        scheduler.run(todo)
    except BaseException as exc:
        accounting.fail(exc, [info for pool in pools for info in pool.actor_infos()])  # report kept
        raise
    finally:
        infos = [info for pool in pools for info in pool.actor_infos()]
        for pool in pools:
            pool.shutdown()
    # Listeners (pipelines/tracking.py) write runs/RUN_ID.json and the job report, and end the live progress.
    return accounting.finish(infos)


def make_pools(pipeline: Pipeline, rebalancer=None) -> list[StagePool]:
    """One pool per stage; `concurrency: auto` stages start at the rebalancer's initial split."""
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    split = rebalancer.initial_split() if rebalancer is not None else {}
    pools = [
        StagePool(s.name, s.cls, s.kwargs, s.resources.num_cpus, s.resources.gpus_per_actor(has_gpus),
                  s.resources.min_actors, s.resources.max_actors or rebalancer.slots, faults=pipeline.faults,
                  target=split.get(s.name))
        for s in pipeline.stages
    ]
    asks = {p.name: (p.num_cpus, p.num_gpus, p.target or p.min_actors) for p in pools}
    check_fits({**asks, "write": (pipeline.write.num_cpus, 0.0, 1)})
    return pools


def shard_writer(pipeline: Pipeline):
    """ShardWork -> ref of its commit marker, from one Ray write task per shard."""
    # Storage outages are retried inside the task (output.storage.timeout_s); Ray retries a write
    # whose worker died.
    remote = ray.remote(write_shard).options(num_cpus=pipeline.write.num_cpus, max_retries=3)
    output = pipeline.output

    def write(work: ShardWork):
        return remote.remote(
            output.url, output.storage, work.shard.name, [s.as_dict() for s in work.shard.samples],
            pipeline.sample_metadata, work.failed, work.repair, *work.outputs,
        )

    return write


def _job_record(pipeline: Pipeline) -> dict:
    plan = pipeline.plan
    return {
        "format_version": 1,
        "name": pipeline.name,
        "identity": {**pipeline.identity, "plan_sha256": plan.digest()},
        "planned": len(plan),
        "shards": plan.num_shards,
        "samples_per_shard": plan.samples_per_shard,
        "spec": pipeline.spec,
    }
