"""The facts one run records: per-stage counts, busy and waiting time, latency, resources, timeline.

The driver feeds it three kinds of facts and nothing else:
  - `submitted` / `record`: a batch entered a stage / a stage finished a batch (items, busy seconds);
  - `observe`: once per driver-loop turn, each stage's load (actors, queued batches, free slots);
  - `committed` / `failure` / `note`: shards committed, batches that failed, remarks.
Readers turn them into figures: pipelines/observe/run_report.py (the run report, cost),
pipelines/observe/eta.py (smoothed rate, ETA), pipelines/observe/progress.py (the live display). Time integrals (actor-seconds, backlog) are taken
between consecutive `observe` calls: the driver changes the state only between them, so the
integrals are exact up to the loop's own bookkeeping time.

Terms, per stage:
  busy_s            seconds the stage's code ran, summed over actors (measured inside the actor)
  actor_s           seconds actors were ready (model loaded), summed over actors: the capacity held
  reserved_actor_s  like actor_s but from the moment an actor was asked for (loading included):
                    what resources were allocated for, so what GPU/CPU-seconds and cost use
  idle_s            actor_s - busy_s
  waiting_for_input_s   wall seconds with a ready actor doing nothing and nothing queued for it
  input_backlog_s   wall seconds with batches queued for this stage and no free actor slot:
                    the stage is holding up the stage before it
  backpressured_s   wall seconds the stage's finished output waited because the next stage had
                    no free slot (the next stage's input_backlog_s)
The write stage is Ray tasks, not actors: its "actors" are its concurrent write slots, and its
resources are held only while a write task runs (reserved_actor_s = summed task durations).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

# Latency histograms: log-spaced buckets 5% wide from 1 ms, so runs merge into job totals.
_BUCKET_BASE, _BUCKET_RATIO = 1e-3, 1.05
TIMELINE_POINTS = 600  # at most this many timeline points per run (older ones are thinned)
RECENT_LATENCIES = 4096


def bucket_of(seconds: float) -> int:
    return max(0, int(math.log(max(seconds, _BUCKET_BASE) / _BUCKET_BASE) / math.log(_BUCKET_RATIO)))


def bucket_value(bucket: int) -> float:
    """The geometric middle of a bucket."""
    return _BUCKET_BASE * _BUCKET_RATIO ** (bucket + 0.5)


def percentiles_from_histogram(hist: dict) -> dict:
    """p50/p95 of a {bucket: count} histogram (JSON keys may be strings); within 2.5%."""
    counts = sorted((int(b), n) for b, n in hist.items())
    total = sum(n for _, n in counts)
    out = {}
    for name, q in (("p50", 0.5), ("p95", 0.95)):
        if not total:
            out[name] = None
            continue
        rank, seen = q * total, 0
        for bucket, n in counts:
            seen += n
            if seen >= rank:
                out[name] = round(bucket_value(bucket), 4)
                break
    return out


def exact_percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); the reference the histogram
    quantiles are checked against."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def histogram_summary(hist: dict, total_s: float, count: int, low: float | None, high: float | None) -> dict:
    """mean (exact), p50/p95 (from the histogram, within its 5% bucket width, kept inside [min, max]), max."""
    if not count:
        return {"mean": None, "p50": None, "p95": None, "max": None}
    quantiles = percentiles_from_histogram(hist)
    return {
        "mean": round(total_s / count, 4),
        **{name: round(min(high, max(low, value)), 4) for name, value in quantiles.items()},
        "max": round(high, 4),
    }


@dataclass
class Distribution:
    """Seconds per event (a batch's service time or latency) in constant memory: a log-bucket
    histogram plus count, sum, min and max. Recording and summarising cost the same at the
    millionth batch as at the first."""

    hist: dict = field(default_factory=dict)
    count: int = 0
    total_s: float = 0.0
    low: float | None = None
    high: float | None = None

    def add(self, seconds: float) -> None:
        b = bucket_of(seconds)
        self.hist[b] = self.hist.get(b, 0) + 1
        self.count += 1
        self.total_s += seconds
        self.low = seconds if self.low is None else min(self.low, seconds)
        self.high = seconds if self.high is None else max(self.high, seconds)

    def summary(self) -> dict:
        return histogram_summary(self.hist, self.total_s, self.count, self.low, self.high)

    def as_hist(self) -> dict:
        return {str(k): v for k, v in sorted(self.hist.items())}


@dataclass(frozen=True)
class StageLoad:
    """A stage's state at one moment, as the driver sees it."""

    actors: int  # ready (model loaded) actors, or write slots
    reserved: float  # actors asked for (loading included); for write: tasks running now
    queued: int  # batches waiting for a free slot of this stage
    free_slots: int
    idle_actors: int  # ready actors with no call at all
    cpus_per_actor: float
    gpus_per_actor: float


def task_load(slots: int, running: int, queued: int, cpus_per_task: float) -> StageLoad:
    """The load of a stage run as Ray tasks with a fixed number of concurrent slots (write)."""
    return StageLoad(
        actors=slots,
        reserved=0,  # task resources are counted per task from its duration, see record()
        queued=queued,
        free_slots=max(0, slots - running),
        idle_actors=max(0, slots - running),
        cpus_per_actor=float(cpus_per_task),
        gpus_per_actor=0.0,
    )


@dataclass
class StageStats:
    name: str
    items_in: int = 0
    items_out: int = 0
    batches: int = 0
    failed_batches: int = 0
    busy_s: float = 0.0
    actor_s: float = 0.0
    reserved_actor_s: float = 0.0
    task_s: float = 0.0  # tasks only: summed durations from submission to result
    waiting_for_input_s: float = 0.0
    input_backlog_s: float = 0.0
    queued_batch_s: float = 0.0
    backpressured_s: float = 0.0
    cpus_per_actor: float = 0.0
    gpus_per_actor: float = 0.0
    is_tasks: bool = False
    actors_min: int | None = None
    actors_max: int = 0
    observed_s: float = 0.0
    first_start: float | None = None  # wall clock of the first batch's start
    service: Distribution = field(default_factory=Distribution)  # per batch, inside the actor/task
    latency: Distribution = field(default_factory=Distribution)  # submission -> result seen by the driver
    # The latest latencies, for listeners that forward each one (Ray metrics); bounded.
    recent_latency_s: deque = field(default_factory=lambda: deque(maxlen=RECENT_LATENCIES))

    def add(self, items: int, busy_s: float, started_at: float, latency_s: float | None) -> None:
        self.batches += 1
        self.items_out += items
        self.busy_s += busy_s
        self.service.add(busy_s)
        if latency_s is not None:
            self.latency.add(latency_s)
            self.recent_latency_s.append(latency_s)
        self.first_start = started_at if self.first_start is None else min(self.first_start, started_at)

    def integrate(self, load: StageLoad, seconds: float, next_stage_backlogged: bool) -> None:
        self.cpus_per_actor, self.gpus_per_actor = load.cpus_per_actor, load.gpus_per_actor
        self.actor_s += load.actors * seconds
        if not self.is_tasks:
            self.reserved_actor_s += load.reserved * seconds
        self.queued_batch_s += load.queued * seconds
        if load.queued and not load.free_slots:
            self.input_backlog_s += seconds
        if not load.queued and load.idle_actors:
            self.waiting_for_input_s += seconds
        if next_stage_backlogged:
            self.backpressured_s += seconds
        self.actors_min = load.actors if self.actors_min is None else min(self.actors_min, load.actors)
        self.actors_max = max(self.actors_max, load.actors)
        self.observed_s += seconds


@dataclass
class RunAccounting:
    """The facts of one run. `stage_names`: the chain's stages in order (Pipeline.stage_names), which
    says whose backpressure is whose; `units`: how the kind names its items (Pipeline.units, as a dict)."""

    run_id: str
    planned: int
    already_committed: int
    to_generate: int
    job: str = ""
    prices: dict | None = None  # {"gpu_hour", "cpu_hour", "currency"} from the spec's cost section
    stage_names: tuple[str, ...] = ()
    units: dict = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    written: int = 0
    failed_samples: int = 0
    stages: dict[str, StageStats] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    listeners: list = field(default_factory=list)  # objects with update(acc) and finish(acc)
    status: str = "running"
    error: str | None = None
    actors: list[dict] = field(default_factory=list)  # the actors' infos, known at the end
    timeline: list[dict] = field(default_factory=list)
    _clock: float = field(default_factory=time.monotonic)
    _ended: float | None = None
    _pools_started: float | None = None
    _stream_started: float | None = None
    _last_observe: float | None = None
    _last_loads: dict = field(default_factory=dict)
    _submitted_at: dict = field(default_factory=dict)
    _timeline_step: float = 1.0

    # -- facts from the driver --------------------------------------------------------------

    def stage(self, name: str) -> StageStats:
        if name not in self.stages:
            self.stages[name] = StageStats(name, is_tasks=(name == "write"))
        return self.stages[name]

    def pools_starting(self) -> None:
        self._pools_started = time.monotonic()

    def submitted(self, stage: str, items: int, ref=None) -> None:
        self.stage(stage).items_in += items
        if ref is not None:
            self._submitted_at[ref] = time.time()

    def record(self, stage: str, *, items: int, busy_s: float, started_at: float, ref=None) -> None:
        now = time.time()
        submitted = self._submitted_at.pop(ref, None) if ref is not None else None
        if submitted is None and self.stage(stage).is_tasks:
            submitted = started_at  # tasks are recorded with their submission time
        latency = max(0.0, now - submitted) if submitted is not None else None
        stats = self.stage(stage)
        stats.add(items, busy_s, started_at, latency)
        if stats.is_tasks and latency is not None:
            stats.task_s += max(latency, busy_s)

    def committed(self, samples: int, failed: int = 0) -> None:
        """`failed`: samples recorded as failed after their retries (they are in no tar)."""
        self.written += samples
        self.failed_samples += failed

    def failure(self, stage: str, keys: str, error: str) -> None:
        self.stage(stage).failed_batches += 1
        self.failures.append({"stage": stage, "keys": keys, "error": error, "at": time.time()})

    def note(self, text: str) -> None:
        self.notes.append(text)

    def observe(self, loads: dict[str, StageLoad]) -> None:
        """Called once per driver-loop turn with every stage's load; integrates time since the last call."""
        now = time.monotonic()
        self._integrate(now)
        if self._stream_started is None:
            self._stream_started = now
            # Actors held while loading their models count as reserved (allocated) time.
            if self._pools_started is not None:
                for name, load in loads.items():
                    if not self.stage(name).is_tasks:
                        self.stage(name).reserved_actor_s += load.reserved * (now - self._pools_started)
        self._last_observe = now
        self._last_loads = dict(loads)
        self._add_timeline_point(now)
        self._notify()

    def _integrate(self, now: float) -> None:
        """Credit the loads seen at the last observe() with the time since then."""
        if self._last_observe is not None:
            seconds = now - self._last_observe
            order = self.chain_order(self._last_loads)
            for i, name in enumerate(order):
                load = self._last_loads[name]
                following = self._last_loads.get(order[i + 1]) if i + 1 < len(order) else None
                blocked = following is not None and following.queued > 0 and following.free_slots == 0
                self.stage(name).integrate(load, seconds, blocked)
            self._last_observe = now

    def chain_order(self, names) -> list[str]:
        """`names` in chain order: the pipeline's stage order, then any it does not name, as given."""
        names = list(names)
        return [s for s in self.stage_names if s in names] + [s for s in names if s not in self.stage_names]

    def fail(self, exc: BaseException, actors: list[dict] | None = None) -> None:
        """The run stops with an error: its report is still written, marked failed."""
        self.status = "failed"
        self.error = f"{type(exc).__name__}: {exc}"
        self.finish(actors)

    def finish(self, actors: list[dict] | None = None) -> None:
        """The run is over: the clock stops, the pools are gone, every listener is told once."""
        now = time.monotonic()
        self._integrate(now)
        self._last_loads = {}  # the pools are gone: nothing more to credit
        self._ended = now
        self.actors = list(actors or [])
        if self.status == "running":
            self.status = "finished"
        for listener in self.listeners:
            listener.finish(self)

    # -- clocks and the timeline ------------------------------------------------------------

    def now(self) -> float:
        """Monotonic now, or the end of the run once it finished."""
        return self._ended if self._ended is not None else time.monotonic()

    def elapsed(self) -> float:
        return self.now() - self._clock

    def startup_s(self) -> float:
        """From the pools' start to the first batch streamed (models loading)."""
        if self._stream_started and self._pools_started:
            return self._stream_started - self._pools_started
        return 0.0

    def stream_s(self) -> float:
        """From the first batch submitted to now (or the end)."""
        return self.now() - self._stream_started if self._stream_started else 0.0

    def stream_start_t(self) -> float | None:
        """When streaming began, in timeline seconds (None: not yet)."""
        return self._stream_started - self._clock if self._stream_started else None

    def loads(self) -> dict[str, StageLoad]:
        """Each stage's load at the last observe (empty once finished)."""
        return dict(self._last_loads)

    def _add_timeline_point(self, now: float) -> None:
        t = now - self._clock
        if self.timeline and t - self.timeline[-1]["t"] < self._timeline_step:
            return
        self.timeline.append(self.point(t))
        if len(self.timeline) > TIMELINE_POINTS:
            self.timeline = self.timeline[::2]
            self._timeline_step *= 2

    def point(self, t: float) -> dict:
        """The cumulative facts at timeline second `t` (now's counts)."""
        return {
            "t": round(t, 3),
            "committed": self.written,
            "items": {n: s.items_out for n, s in self.stages.items()},
            "busy_s": {n: round(s.busy_s, 3) for n, s in self.stages.items()},
            "actors": {n: load.actors for n, load in self._last_loads.items()},
            "queued": {n: load.queued for n, load in self._last_loads.items()},
        }

    def _notify(self) -> None:
        for listener in self.listeners:
            listener.update(self)
