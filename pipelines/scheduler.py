"""The shard scheduler: streams the batches of whole shards through a chain of stage pools.

The shard is the unit of work from plan to storage. Each planned shard is cut into batches the
same way every time (by the first stage's batch_size); a batch's output flows from stage to stage
as an object reference (the driver never touches latents or pixels), and once every batch of a
shard has left the last stage, one write task streams the shard to storage and commits it.
Keeping shards whole makes shard names fixed (no gaps, no duplicates on rerun), lets a rerun skip
exactly the committed shards, and bounds memory by the shards in flight. Ray Data was measured to
mix and split planned shards across write tasks (see DESIGN.md).

A batch that fails is split into single samples, and each is retried up to `max_retries` times
from the first stage (the outputs of a dead actor may be gone, and a bad value found late is
usually made early); a sample that still fails is written to its shard's manifest as failed.

The scheduler knows nothing about Ray: it talks to pools (pipelines/actors.py) and a runtime
(wait/get/write), so it can be driven by fake pools in unit tests.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from pipelines.errors import OutputError, StageStalled
from pipelines.observe.accounting import task_load
from pipelines.observe.phases import warn

IDLE_WAIT_S = 0.05
STALL_CHECK_S = 5.0  # how often stages without progress are looked at (a look may ask Ray for its nodes)


class ShardQueue:
    """The shards still to do, in order, as (shard index, keys to regenerate or None for all).

    Shard indices sit in one numpy array (8 bytes a shard: a 10M-sample plan's queue is a few MB,
    where a deque of tuples held 80 bytes a shard); only repairs carry their keys.
    """

    def __init__(self, fresh=(), repairs: dict[int, frozenset] | None = None):
        self.repairs = dict(repairs or {})
        self._order = np.union1d(np.asarray(fresh, dtype=np.int64), np.fromiter(self.repairs, dtype=np.int64))
        self._next = 0

    def __len__(self) -> int:
        return len(self._order) - self._next

    def popleft(self) -> tuple[int, frozenset | None]:
        index = int(self._order[self._next])
        self._next += 1
        return index, self.repairs.pop(index, None)


@dataclass
class ShardWork:
    """One shard in flight: the samples to run now (all, or only failed ones on repair)."""

    shard: object  # pipelines.plan.ShardPlan
    todo: tuple
    repair: bool
    pending: set[str] = field(default_factory=set)
    outputs: list = field(default_factory=list)  # refs of the last stage's batches
    failed: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.pending = {s.key for s in self.todo}


@dataclass
class Batch:
    work: ShardWork
    samples: tuple
    attempts: int = 0

    @property
    def keys(self) -> str:
        return self.samples[0].key if len(self.samples) == 1 else f"{self.samples[0].key}..{self.samples[-1].key}"

    def payload(self) -> dict:
        return {"keys": [s.key for s in self.samples], "samples": [s.as_dict() for s in self.samples]}


# Calls an actor holds at once (pipelines/actors.py): one running, one waiting.
CALLS_PER_ACTOR = 2


def shards_in_flight(actors: int, batch_size: int, samples_per_shard: int, write_concurrency: int) -> int:
    """Shards active at once: batches enough to fill every actor's call slots twice over, in whole
    shards, plus the shards being written. Counted in batches, not shards: a shard of 1,000 samples
    in batches of 8 fills 125 slots alone, and two shards per actor would hold 2 x actors x 1,000
    images in flight."""
    batches_per_shard = -(-samples_per_shard // batch_size)
    return -(-2 * CALLS_PER_ACTOR * actors // batches_per_shard) + write_concurrency


class ShardScheduler:
    """The driver loop: keeps every pool fed from bounded queues and commits shards as they finish.

    `pools`: one per stage, in chain order. `runtime`: wait(refs, timeout), get(ref),
    is_actor_death(exc), discard(ref), write(work) -> ref, total_cpus. `on_commit(name, marker)`
    is called after each commit (the runner updates index.json there). `rebalancer`
    (pipelines/autoscale.py, optional) moves GPUs between pools as measured rates ask: pools then
    also need `target` and `resize(actors)`. `stall_timeout_s`: a stage with work and no finished
    batch for that long fails the run if none of its actors is alive (`pool.live_actors()`).
    """

    def __init__(self, plan, pools: list, runtime, accounting, *, batch_size: int, max_retries: int,
                 write_concurrency: int, write_cpus: float, committed: int, on_commit, rebalancer=None,
                 stall_timeout_s: float | None = None):
        self.plan, self.pools, self.runtime, self.accounting = plan, pools, runtime, accounting
        self.rebalancer = rebalancer
        self.stall_timeout_s = stall_timeout_s
        self._progress_at = [time.monotonic()] * len(pools)  # per stage: last finished batch, or idle
        self._next_stall_check = 0.0
        self.batch_size, self.max_retries = batch_size, max_retries
        self.write_concurrency, self.write_cpus = write_concurrency, write_cpus
        self.committed, self.on_commit = committed, on_commit
        self.max_active = shards_in_flight(sum(p.max_actors for p in pools), batch_size, plan.samples_per_shard,
                                           write_concurrency)
        self.active: dict[str, ShardWork] = {}
        # queues[i]: batches waiting for stage i, with the previous stage's output ref (None for
        # the first stage, which gets the samples themselves).
        self.queues: list[deque[tuple[Batch, object]]] = [deque() for _ in pools]
        self.write_queue: deque[ShardWork] = deque()
        self.waiting: dict[object, tuple] = {}  # stats or marker ref -> what it is for
        self.writes_in_flight = 0
        self.stop_requested = False

    def stop(self) -> None:
        """Submit nothing more; `run` returns once the writes in flight are committed (Ctrl-C)."""
        self.stop_requested = True

    def run(self, todo: ShardQueue | deque[tuple[int, frozenset | None]]) -> None:
        """`todo`: (shard index, keys to regenerate or None for all) for every shard to do."""
        while (todo or self.active) and not (self.stop_requested and not self.writes_in_flight):
            while not self.stop_requested and todo and len(self.active) < self.max_active:
                self._activate(*todo.popleft())
            if not self.stop_requested:
                self._submit()
            self.accounting.observe(self.loads())  # also drives progress, metrics, report flushes
            self._check_stalls()
            if not self.waiting:
                # Nothing in flight (actors still starting, or only writes to queue): don't spin.
                time.sleep(IDLE_WAIT_S)
                continue
            # Every result ready now is handled in one turn: one wait per turn, not per result.
            for ref in self.runtime.wait(list(self.waiting), timeout=1.0):
                self._on_ready(ref)
            if self.rebalancer is not None:
                self._rebalance()

    def _activate(self, index: int, only: frozenset | None) -> None:
        shard = self.plan.shard(index)
        samples = shard.samples if only is None else tuple(s for s in shard.samples if s.key in only)
        work = ShardWork(shard, samples, repair=only is not None)
        self.active[shard.name] = work
        size = self.batch_size
        self.queues[0].extend((Batch(work, samples[i : i + size]), None) for i in range(0, len(samples), size))
        self._maybe_ready_to_write(work)

    def _submit(self) -> None:
        spare = self._spare_cpus()
        for stage, (pool, queue) in enumerate(zip(self.pools, self.queues)):
            pool.scale_for(len(queue), spare)
            while queue and pool.free_slots() > 0:
                batch, input_ref = queue.popleft()
                payload = batch.payload() if input_ref is None else input_ref
                result_ref, stats_ref, member = pool.submit(payload, batch.attempts)
                self.waiting[stats_ref] = (stage, batch, result_ref, member)
                self.accounting.submitted(pool.name, len(batch.samples), ref=stats_ref)
        while self.write_queue and self.writes_in_flight < self.write_concurrency:
            work = self.write_queue.popleft()
            self.waiting[self.runtime.write(work)] = ("write", work, time.time())
            self.writes_in_flight += 1
            self.accounting.submitted("write", len(work.shard.samples))  # a write (re)writes the whole shard

    def _spare_cpus(self) -> float:
        return self.runtime.total_cpus - sum(p.held_cpus() for p in self.pools) - self.write_cpus

    def _on_ready(self, ref) -> None:
        stage, *rest = self.waiting.pop(ref)
        if stage == "write":
            self._on_written(ref, *rest)
            return
        batch, result_ref, member = rest
        pool = self.pools[stage]
        self._progress_at[stage] = time.monotonic()
        try:
            stats = self.runtime.get(ref)
        except Exception as exc:
            dead = self.runtime.is_actor_death(exc)
            if dead and not self.stop_requested:
                warn(pool.describe_death(member))
            pool.release(member, dead=dead)
            self.runtime.discard(result_ref)
            self._on_failure(batch, pool.name, exc)
            return
        pool.release(member)
        warm = stats.pop("warm", True)
        restarted = pool.note_process(member, stats.pop("pid", None))
        if restarted and not self.stop_requested:
            warn(restarted)
        self.accounting.record(pool.name, **stats, ref=ref)
        if self.rebalancer is not None:
            self.rebalancer.record(pool.name, stats["items"], stats["busy_s"], warm)
        if stage + 1 < len(self.pools):
            self.queues[stage + 1].append((batch, result_ref))
            return
        work = batch.work
        work.outputs.append(result_ref)
        work.pending.difference_update(s.key for s in batch.samples)
        self._maybe_ready_to_write(work)

    def _rebalance(self) -> None:
        pools = {p.name: p for p in self.pools if p.name in self.rebalancer.stages}
        decision = self.rebalancer.decide(time.monotonic(), {name: p.target for name, p in pools.items()})
        if decision is None:
            return
        # Shrink first: a retiring actor's GPU is what the growing pool starts its new actor on.
        for name in sorted(decision.split, key=lambda n: decision.split[n] - pools[n].target):
            pools[name].resize(decision.split[name])
        self.accounting.note(decision.describe())

    def _check_stalls(self) -> None:
        """Ray restarts an actor whose node was lost on another node, and its calls wait until it
        can: forever, when the cluster has no room for it. A stage with work, no finished batch for
        `stall_timeout_s` and no live actor fails the run instead, saying what it waits for."""
        now = time.monotonic()
        if self.stall_timeout_s is None or now < self._next_stall_check:
            return
        self._next_stall_check = now + min(STALL_CHECK_S, self.stall_timeout_s / 2)
        busy = {entry[0] for entry in self.waiting.values()}
        for stage, (pool, queue) in enumerate(zip(self.pools, self.queues)):
            if not queue and stage not in busy:
                self._progress_at[stage] = now  # nothing to do is not a stall
            elif now - self._progress_at[stage] > self.stall_timeout_s and pool.live_actors() == 0:
                load = pool.load(len(queue))
                raise StageStalled(
                    f"stage {pool.name!r} has had work and no live actor for {self.stall_timeout_s:g} s: its "
                    f"actors' node was lost and the cluster has no room to start them again (each asks for "
                    f"num_cpus={load.cpus_per_actor:g}, num_gpus={load.gpus_per_actor:g}). The {self.committed} "
                    "shards committed are intact; rerun the same command to resume once the cluster has room."
                )

    def _on_failure(self, batch: Batch, stage: str, exc: Exception) -> None:
        """Split a failed batch into single samples; a sample out of retries is recorded as failed."""
        batch.attempts += 1
        cause = error_cause(exc)
        self.accounting.failure(stage, batch.keys, cause)
        first = self.queues[0]
        if len(batch.samples) > 1:
            first.extendleft((Batch(batch.work, (s,), batch.attempts), None) for s in reversed(batch.samples))
        elif batch.attempts <= self.max_retries:
            first.appendleft((batch, None))
        else:
            work = batch.work
            key = batch.samples[0].key
            work.failed.append({"key": key, "stage": stage, "error": cause, "attempts": batch.attempts})
            work.pending.discard(key)
            self._maybe_ready_to_write(work)

    def _maybe_ready_to_write(self, work: ShardWork) -> None:
        if not work.pending:
            self.write_queue.append(work)

    def _on_written(self, ref, work: ShardWork, submitted_at: float) -> None:
        self.writes_in_flight -= 1
        try:
            marker = self.runtime.get(ref)
        except Exception as exc:
            raise OutputError(
                f"writing shard {work.shard.name} failed: {error_cause(exc)}. The {self.committed} shards committed "
                "before are intact; rerun the same command to resume."
            ) from None
        self.committed += 1
        self.on_commit(work.shard.name, marker)
        self.accounting.record("write", items=marker["samples"], busy_s=marker["write_seconds"], started_at=submitted_at)
        self.accounting.committed(len(work.todo) - marker["failed"], marker["failed"])
        del self.active[work.shard.name]

    def loads(self) -> dict:
        """Each stage's load now, for the accounting's time integrals."""
        loads = {pool.name: pool.load(len(queue)) for pool, queue in zip(self.pools, self.queues)}
        loads["write"] = task_load(self.write_concurrency, self.writes_in_flight, len(self.write_queue), self.write_cpus)
        return loads


def error_cause(exc: BaseException) -> str:
    """The user-facing last line of a (remote) error."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[-1] if text else ''}".rstrip(": ")

