"""Throughput accounting for one run: per-stage counts, busy and waiting time, latency, resources, cost.

The driver feeds it three kinds of facts and nothing else:
  - `submitted` / `record`: a batch entered a stage / a stage finished a batch (items, busy seconds);
  - `observe`: once per driver-loop turn, each stage's load (actors, queued batches, free slots);
  - `committed` / `failure` / `note`: shards committed, batches that failed, remarks.
From those it derives what the report shows. Time integrals (actor-seconds, backlog) are taken
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

import datetime as dt
import math
import time
from collections import deque
from dataclasses import dataclass, field

STAGE_ORDER = ("read", "encode", "denoise", "decode", "monitor", "write")  # the stage names of every job kind, in chain order
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


def _ratio(a: float, b: float, digits: int = 4) -> float | None:
    return round(a / b, digits) if b > 0 else None


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

    def as_dict(self, wall_s: float) -> dict:
        reserved = self.task_s if self.is_tasks else self.reserved_actor_s
        gpu_s = reserved * self.gpus_per_actor
        cpu_s = reserved * self.cpus_per_actor
        mean_actors = self.actor_s / self.observed_s if self.observed_s > 0 else float(self.actors_max)
        return {
            "items_in": self.items_in,
            "items_out": self.items_out,
            "items": self.items_out,  # = items_out (the name older reports used)
            "batches": self.batches,
            "failed_batches": self.failed_batches,
            "busy_s": round(self.busy_s, 4),
            "actor_s": round(self.actor_s, 4),
            "reserved_actor_s": round(reserved, 4),
            "idle_s": round(max(0.0, self.actor_s - self.busy_s), 4),
            "waiting_for_input_s": round(self.waiting_for_input_s, 3),
            "input_backlog_s": round(self.input_backlog_s, 3),
            "queued_batch_s": round(self.queued_batch_s, 3),
            "backpressured_s": round(self.backpressured_s, 3),
            "utilisation": _ratio(self.busy_s, self.actor_s),
            "items_per_s": _ratio(self.items_out, wall_s, 3),
            "items_per_busy_s": _ratio(self.items_out, self.busy_s, 3),
            # What the stage could do with its mean actors if never starved: the bottleneck has the lowest.
            "capacity_items_per_s": _ratio(self.items_out * mean_actors, self.busy_s, 3),
            "batch_s": self.service.summary(),
            "latency_s": self.latency.summary(),
            "actors": {"min": self.actors_min or 0, "max": self.actors_max, "mean": round(mean_actors, 3)},
            "observed_s": round(self.observed_s, 3),
            "kind": "tasks" if self.is_tasks else "actors",
            "cpus_per_actor": self.cpus_per_actor,
            "gpus_per_actor": self.gpus_per_actor,
            "gpu_s": round(gpu_s, 4),
            "cpu_s": round(cpu_s, 4),
            "gpu_s_per_item": _ratio(gpu_s, self.items_out, 6),
            "cpu_s_per_item": _ratio(cpu_s, self.items_out, 6),
            "service_hist": self.service.as_hist(),
            "latency_hist": self.latency.as_hist(),
        }


def cost_of(gpu_hours: float, cpu_hours: float, prices: dict | None, images: int) -> dict | None:
    """Money for resource-hours at the spec's prices; None when the spec gives no prices."""
    if prices is None:
        return None
    total = gpu_hours * prices["gpu_hour"] + cpu_hours * prices["cpu_hour"]
    return {
        "currency": prices.get("currency", "USD"),
        "gpu_hour": prices["gpu_hour"],
        "cpu_hour": prices["cpu_hour"],
        "total": round(total, 6),
        "per_1000_images": round(1000 * total / images, 6) if images else None,
    }


@dataclass
class RunAccounting:
    run_id: str
    planned: int
    already_committed: int
    to_generate: int
    job: str = ""
    prices: dict | None = None  # {"gpu_hour", "cpu_hour", "currency"} from the spec's cost section
    started_at: float = field(default_factory=time.time)
    written: int = 0
    failed_samples: int = 0
    stages: dict[str, StageStats] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    listeners: list = field(default_factory=list)  # objects with update(acc) and finish(acc, report)
    status: str = "running"
    error: str | None = None
    timeline: list[dict] = field(default_factory=list)
    _clock: float = field(default_factory=time.monotonic)
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
                    if name != "write":
                        self.stage(name).reserved_actor_s += load.reserved * (now - self._pools_started)
        self._last_observe = now
        self._last_loads = dict(loads)
        self._add_timeline_point(now)
        self._notify()

    def _integrate(self, now: float) -> None:
        """Credit the loads seen at the last observe() with the time since then."""
        if self._last_observe is not None:
            seconds = now - self._last_observe
            order = [s for s in STAGE_ORDER if s in self._last_loads] + [
                s for s in self._last_loads if s not in STAGE_ORDER
            ]
            for i, name in enumerate(order):
                load = self._last_loads[name]
                following = self._last_loads.get(order[i + 1]) if i + 1 < len(order) else None
                blocked = following is not None and following.queued > 0 and following.free_slots == 0
                self.stage(name).integrate(load, seconds, blocked)
            self._last_observe = now

    def fail(self, exc: BaseException, actors: list[dict] | None = None) -> dict:
        """The run stops with an error: its report is still written, marked failed."""
        self.status = "failed"
        self.error = f"{type(exc).__name__}: {exc}"
        return self.finish(actors)

    # -- derived numbers --------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self._clock

    def eta_s(self) -> float | None:
        """Remaining samples at the rate seen so far (committed samples, else decoded ones)."""
        remaining = self.to_generate - self.written
        if remaining <= 0:
            return 0.0
        since = self._stream_started or self._clock
        elapsed = time.monotonic() - since
        done = self.written
        if done == 0 and "decode" in self.stages:
            done = self.stages["decode"].items_out  # before the first commit, decoded samples
        if done <= 0 or elapsed <= 0:
            return None
        return remaining / (done / elapsed)

    def _add_timeline_point(self, now: float) -> None:
        t = now - self._clock
        if self.timeline and t - self.timeline[-1]["t"] < self._timeline_step:
            return
        self.timeline.append(self._point(t))
        if len(self.timeline) > TIMELINE_POINTS:
            self.timeline = self.timeline[::2]
            self._timeline_step *= 2

    def _point(self, t: float) -> dict:
        return {
            "t": round(t, 3),
            "committed": self.written,
            "items": {n: s.items_out for n, s in self.stages.items()},
            "busy_s": {n: round(s.busy_s, 3) for n, s in self.stages.items()},
            "actors": {n: load.actors for n, load in self._last_loads.items()},
            "queued": {n: load.queued for n, load in self._last_loads.items()},
        }

    def report(self, actors: list[dict] | None = None) -> dict:
        """The run report: everything above, as one JSON-able dict. Valid while running too."""
        now_wall = time.time()
        wall = self.elapsed()
        ordered = sorted(self.stages.items(), key=lambda kv: STAGE_ORDER.index(kv[0]) if kv[0] in STAGE_ORDER else 99)
        stages = {name: s.as_dict(wall) for name, s in ordered}
        gpu_hours = sum(s["gpu_s"] for s in stages.values()) / 3600
        cpu_hours = sum(s["cpu_s"] for s in stages.values()) / 3600
        timeline = list(self.timeline)
        if not timeline or timeline[-1]["t"] < wall:
            timeline.append(self._point(wall))
        startup = (self._stream_started - self._pools_started) if self._stream_started and self._pools_started else 0.0
        return {
            "run_id": self.run_id,
            "job": self.job,
            "status": self.status,
            "error": self.error,
            "started": dt.datetime.fromtimestamp(self.started_at, dt.timezone.utc).isoformat(),
            "updated": dt.datetime.fromtimestamp(now_wall, dt.timezone.utc).isoformat(),
            "updated_unix": round(now_wall, 3),
            "wall_s": round(wall, 3),
            "startup_s": round(startup, 3),
            # From the first batch submitted to now (or the end): wall time minus setup and start-up.
            "stream_s": round(time.monotonic() - self._stream_started, 3) if self._stream_started else 0.0,
            "planned": self.planned,
            "already_committed": self.already_committed,
            "to_generate": self.to_generate,
            "generated": self.written,
            "failed": self.failed_samples,
            "samples_per_s": _ratio(self.written, wall, 3),
            "eta_s": None if self.status != "running" else _round(self.eta_s()),
            "gpu_hours": round(gpu_hours, 8),
            "cpu_hours": round(cpu_hours, 8),
            "cost": cost_of(gpu_hours, cpu_hours, self.prices, self.written),
            "stages": stages,
            "timeline": timeline,
            "actors": actors or [],
            "failures": self.failures,
            "notes": self.notes,
        }

    def finish(self, actors: list[dict] | None = None) -> dict:
        self._integrate(time.monotonic())
        self._last_loads = {}  # the pools are gone: nothing more to credit
        if self.status == "running":
            self.status = "finished"
        report = self.report(actors)
        for listener in self.listeners:
            listener.finish(self, report)
        return report

    def _notify(self) -> None:
        for listener in self.listeners:
            listener.update(self)

    def progress_line(self, label: str) -> str:
        """One plain line: committed samples, rate, ETA and per-stage items (for logs)."""
        elapsed = self.elapsed()
        rate = self.written / elapsed if elapsed > 0 else 0.0
        eta = self.eta_s()
        stages = " ".join(f"{name} {s.items_out}" for name, s in self.stages.items())
        done = self.already_committed + self.written
        eta_text = "?" if eta is None else f"{eta:.0f}s"
        return f"[{label}] {done}/{self.planned} samples committed | {rate:.1f}/s | ETA {eta_text} | {stages}"


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
