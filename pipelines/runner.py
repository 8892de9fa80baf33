"""Run a pipeline: claim its output, start its stage pools, stream its shards, commit, report.

Any job kind runs here the same way: the kind (jobs/kinds/) builds a `Pipeline` (a plan, a chain
of stages, a sink), and this module does what every kind needs: one driver per output (its lease),
output claim and resume by commit markers (checked against the files), pools pinned to their
resources, the shard scheduler (pipelines/scheduler.py), the shard writer, Ctrl-C, and the run's
accounting and report.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import numpy as np
import ray

from pipelines.actors import RayRuntime, StagePool, check_fits
from pipelines.autoscale import rebalancer_for
from pipelines.errors import Interrupted, OutputError
from pipelines.observe.accounting import RunAccounting
from pipelines.observe.phases import phase, warn
from pipelines.observe.run_report import run_report
from pipelines.observe.tracking import run_listeners
from pipelines.pipeline import Pipeline
from pipelines.plan import shard_name
from pipelines.scheduler import ShardQueue, ShardScheduler, ShardWork
from pipelines.sinks.integrity import damaged_shards
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.lease import OutputLease, describe_holder
from pipelines.sinks.shard_index import ShardIndex
from pipelines.sinks.webdataset_writer import write_shard


@dataclass(frozen=True)
class RunOptions:
    """How one run goes: `connect` to Ray (only when there is work), how long stage actors may take
    to start, how long a stage with work may have no live actor (default: the start timeout), live
    progress, whether failed samples are generated again, and whether resuming checks sha256 too."""

    connect: Callable[[], None] = lambda: None
    start_timeout_s: float = 900.0
    stall_timeout_s: float | None = None
    progress: bool = True
    retry_failed: bool = False
    check_full: bool = False

    @property
    def stall_s(self) -> float:
        return self.stall_timeout_s or self.start_timeout_s


@dataclass
class Recovery:
    """The output as a run finds it, once it is made consistent: what is committed and what is left."""

    notes: list[str]
    index: ShardIndex
    todo: ShardQueue
    to_generate: int
    repair_bases: dict  # shard name -> the committed marker a repair starts from
    changed: bool  # anything to do or report; a run with nothing changes nothing


def run_pipeline(
    pipeline: Pipeline,
    *,
    connect: Callable[[], None] = lambda: None,
    start_timeout_s: float = 900.0,
    stall_timeout_s: float | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    check_full: bool = False,
    wait: bool = False,
) -> dict:
    """Run every planned sample not yet committed under pipeline.output.url. Returns the run report.

    `start_timeout_s`: how long stage actors may take to start. `stall_timeout_s` (default: the
    same): how long a stage with work may have no live actor (its node lost) before the run fails.

    Everything that changes the output happens under its lease (one driver per output; `wait`:
    wait for a driver that holds it instead of refusing). Ray is connected to (`connect`) only when
    there is work: checking a finished output needs none.
    """
    options = RunOptions(connect, start_timeout_s, stall_timeout_s, progress, retry_failed, check_full)
    layout = OutputLayout(pipeline.output.url, pipeline.output.storage)
    layout.check_reachable()
    layout.refuse_foreign_data()
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    with OutputLease(layout, run_id, pipeline.output.lease_ttl_s).acquire(wait=wait) as lease:
        return _run_under_lease(pipeline, layout, lease, options)


def _run_under_lease(pipeline: Pipeline, layout: OutputLayout, lease: OutputLease, options: RunOptions) -> dict:
    recovery = _recover(pipeline, layout, lease, options)
    accounting = RunAccounting(
        run_id=lease.run_id,
        planned=len(pipeline.plan),
        already_committed=recovery.index.committed_samples,
        to_generate=recovery.to_generate,
        job=pipeline.name,
        prices=vars(pipeline.cost) if pipeline.cost is not None else None,
        stage_names=pipeline.stage_names,
        units=dataclasses.asdict(pipeline.units),
        # A run with nothing to do leaves no run report, so checking a finished output changes nothing.
        listeners=run_listeners(layout, pipeline.name, options.progress) if recovery.changed else [],
    )
    for note in recovery.notes:
        accounting.note(note)
    if not recovery.todo:
        accounting.finish([])
        return run_report(accounting)
    phase(_what_runs(pipeline, recovery.index.committed_samples, recovery.to_generate, len(recovery.todo)))
    options.connect()
    return _stream(pipeline, layout, lease, recovery, accounting, options)


def _recover(pipeline: Pipeline, layout: OutputLayout, lease: OutputLease, options: RunOptions) -> Recovery:
    """Claim the output, regenerate damaged shards, remove debris, index what is committed, and
    find what is left to do."""
    plan = pipeline.plan
    outcome = layout.claim(_job_record(pipeline), plan, pipeline.output.mode)
    markers, invalid = layout.read_markers()
    notes = [f"output: {outcome}"]
    if lease.taken_over:
        notes.append(f"took over the expired lease of {describe_holder(lease.taken_over)}")
    # A committed shard whose files no longer match its marker, or whose marker is torn, is generated again, whole.
    damaged = {**{name: f"its commit marker is not valid ({why})" for name, why in invalid.items()},
               **damaged_shards(layout, markers, full=options.check_full)}
    for name, why in sorted(damaged.items()):
        notes.append(f"shard {name} is generated again: {why}")
        warn(f"shard {name} is generated again: {why}")
        layout.uncommit(name)
        markers.pop(name, None)
    debris = layout.remove_debris(markers)
    if debris:
        notes.append(f"removed {len(debris)} files of interrupted shard writes or replaced repairs")
    index = ShardIndex.from_markers(plan.num_shards, markers)
    index.write(layout)
    todo, to_generate = _shards_to_do(plan, markers, options.retry_failed)
    # From here on the driver keeps only the index (bytes per shard) and the markers of shards it repairs.
    repair_bases = {shard_name(i): markers[shard_name(i)] for i in todo.repairs}
    changed = bool(todo or debris or lease.taken_over or len(notes) > 1)
    return Recovery(notes, index, todo, to_generate, repair_bases, changed)


def _start_pools(pools: list[StagePool], layout: OutputLayout, start_timeout_s: float) -> None:
    for pool in pools:
        pool.start()
    wait_until_ready(pools, start_timeout_s)
    layout.check_devices({pool.name: sorted({i["device"] for i in pool.actor_infos()}) for pool in pools})


def _stream(pipeline: Pipeline, layout: OutputLayout, lease: OutputLease, recovery: Recovery,
            accounting: RunAccounting, options: RunOptions) -> dict:
    """Start the stage pools and stream the shards left to do through them, committing as they finish."""
    index = recovery.index
    rebalancer = rebalancer_for(pipeline.stages, pipeline.gpus, ray.cluster_resources().get("GPU", 0),
                                pipeline.auto_start)
    if rebalancer is not None:
        accounting.note(rebalancer.describe_start())
        phase(rebalancer.describe_start())
    pools = make_pools(pipeline, rebalancer)
    phase(starting_line(pools))
    accounting.pools_starting()
    interrupts = _Interrupts()
    infos: list[dict] = []
    try:
        with interrupts:
            _start_pools(pools, layout, options.start_timeout_s)

            def on_commit(name: str, marker: dict) -> None:
                index.add(name, marker)
                index.write_if_due(layout)

            scheduler = ShardScheduler(
                pipeline.plan, pools, RayRuntime(shard_writer(pipeline, recovery.repair_bases)), accounting,
                batch_size=pipeline.stages[0].resources.batch_size, max_retries=pipeline.max_retries,
                write_concurrency=pipeline.write.concurrency, write_cpus=pipeline.write.num_cpus,
                committed=index.committed, on_commit=on_commit, rebalancer=rebalancer,
                stall_timeout_s=options.stall_s,
            )
            interrupts.scheduler = scheduler
            lease.on_lost = scheduler.stop
            scheduler.run(recovery.todo)
            interrupts.scheduler = None
            lease.check()
            index.write(layout)
    except KeyboardInterrupt:
        interrupts.count += 1
    except BaseException as exc:
        accounting.fail(exc, [info for pool in pools for info in pool.actor_infos()])  # report kept
        if not isinstance(exc, OutputError):  # a failed storage or a lost lease: the index is not ours to write
            _list_committed(index, layout)
        raise
    finally:
        infos = [info for pool in pools for info in pool.actor_infos()]
        for pool in pools:
            pool.shutdown()
    if interrupts.count:
        return _interrupted(pipeline, layout, accounting, infos)
    layout.remove_debris(layout.committed_markers())  # the files that repairs replaced
    # Listeners (pipelines/observe/tracking.py) write runs/RUN_ID.json and the job report, and end the live progress.
    accounting.finish(infos)
    return run_report(accounting)


def _what_runs(pipeline: Pipeline, committed: int, to_run: int, shards: int) -> str:
    units, planned = pipeline.units, len(pipeline.plan)
    if committed:
        return (f"resuming: {committed}/{planned} {units.plural} already committed; {to_run} to run "
                f"({shards} shards)")
    return f"{to_run} {units.plural} to run ({shards} shards) into {pipeline.output.url}"


def wait_until_ready(pools: list[StagePool], timeout_s: float) -> None:
    """Wait for every pool's first actors, saying the ready counts as they change."""
    deadline = time.monotonic() + timeout_s

    def counts() -> str:
        return ", ".join(f"{p.name} {p.ready_actors()}/{len(p.members)}" for p in pools)

    said = counts()
    while not all(p.wait_ready(max(0.0, deadline - time.monotonic()), step_s=0.5) for p in pools):
        if counts() != said:
            said = counts()
            phase(f"loading models: actors ready: {said}")
    phase(f"actors ready: {counts()}; streaming")


def _shards_to_do(plan, markers: dict, retry_failed: bool) -> tuple[ShardQueue, int]:
    """The shards to do (with the keys to regenerate, for repairs), and the samples to generate.
    Work items are built when a shard is activated, so the driver's memory does not grow with the plan."""
    fresh = np.fromiter((i for i in range(plan.num_shards) if shard_name(i) not in markers), dtype=np.int64)
    repairs = {int(name): frozenset(m["failed_keys"]) for name, m in markers.items() if retry_failed and m.get("failed")}
    to_generate = sum(plan.shard_size(int(i)) for i in fresh) + sum(len(keys) for keys in repairs.values())
    return ShardQueue(fresh, repairs), to_generate


def _list_committed(index: ShardIndex, layout: OutputLayout) -> None:
    """A failed run (a stalled stage, a stage error) still lists what it committed in index.json
    for readers; the markers, which verify and reruns go by, are committed already."""
    try:
        index.write(layout)
    except Exception as exc:  # the run's own error is the one to raise
        print(f"warning: index.json not updated: {type(exc).__name__}: {exc}", file=sys.stderr)


def _interrupted(pipeline: Pipeline, layout: OutputLayout, accounting: RunAccounting, infos: list) -> dict:
    """Ctrl-C: the shards committed (in-flight writes drained or abandoned as debris) go to the index."""
    markers = layout.committed_markers()
    layout.remove_debris(markers)
    ShardIndex.from_markers(pipeline.plan.num_shards, markers).write(layout)
    accounting.status = "interrupted"
    accounting.finish(infos)
    samples = sum(m["samples"] for m in markers.values())
    raise Interrupted(
        f"interrupted: {len(markers)}/{pipeline.plan.num_shards} shards ({samples}/{len(pipeline.plan)} "
        f"{pipeline.units.plural}) "
        f"are committed in {pipeline.output.url}; rerun the same command to resume"
    )


class _Interrupts:
    """While active: the first Ctrl-C (or SIGTERM) asks the scheduler to stop (in-flight writes
    finish), a second one, or one before the scheduler runs, abandons the run at once. Main thread only."""

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
        # SIGTERM too: `latentmill stop` (Ray's Jobs API) and Kubernetes stop a driver with it, and a
        # driver killed by Python's default would leave its output lease to expire.
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in (self._previous or {}).items():
            signal.signal(sig, handler)


def starting_line(pools: list[StagePool]) -> str:
    """The phase line said while the pools start: each stage's actors and what each asks for."""
    return "starting actors and loading models: " + ", ".join(
        f"{p.name} {p.target or p.min_actors} x ({p.num_cpus:g} CPU, {p.num_gpus:g} GPU)" for p in pools)


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


def shard_writer(pipeline: Pipeline, repair_bases: dict):
    """ShardWork -> ref of its commit marker, from one Ray write task per shard. A repair starts
    from the shard's committed marker (`repair_bases`) and writes the next revision."""
    # Storage outages are retried inside the task (output.storage.timeout_s); Ray retries a write
    # whose worker died.
    remote = ray.remote(write_shard).options(num_cpus=pipeline.write.num_cpus, max_retries=3)
    output = pipeline.output

    def write(work: ShardWork):
        return remote.remote(
            output.url, output.storage, work.shard.name, [s.as_dict() for s in work.shard.samples],
            pipeline.sample_metadata, work.failed, repair_bases[work.shard.name] if work.repair else None,
            pipeline.faults, *work.outputs,
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
