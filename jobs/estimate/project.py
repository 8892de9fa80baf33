"""The projection of a whole job from one measured batch per stage: arithmetic only, no Ray.

A chain of stages streams at the pace of its slowest stage. A stage with n actors that each take t
seconds per item can do n / t items/s: its capacity, as the run report calls it (the lowest is the
bottleneck). The write's capacity is its shards written at once over its seconds per item (the
write bound). So the job's steady throughput is the lowest capacity, write included.

Wall time = start-up as measured (Ray, then every actor loading its model) + fill (the first batch
passes the stages before the bottleneck, the last batch the stages after it, then its shard is
written: one batch through every stage but the bottleneck, one shard through the write) + items /
throughput. Cost counts resources as the run report does: allocated, not used (an actor holds its
CPUs and GPUs from its start, model loading included, to the end; a write task while it runs).

`concurrency: auto`: the split the job's own rebalancer would choose (pipelines/autoscale.py:
`rebalancer_for` sizes the budget, `best_split` splits it, `split_throughput` rates it) from the
measured seconds per item.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from jobs.estimate.timings import Measurement
from pipelines.autoscale import best_split, rebalancer_for, split_throughput
from pipelines.errors import SchedulingError
from pipelines.observe.run_report import cost_of
from pipelines.pipeline import Units

WRITE = "write"


@dataclass(frozen=True)
class AutoBudget:
    """What `concurrency: auto` splits: `slots` actors (GPUs) between `stages`, or why it cannot
    (`note`). `in_spec`: the spec itself asks for auto on them, so the job runs that split."""

    stages: tuple[str, ...] = ()
    slots: int = 0
    note: str | None = None
    in_spec: bool = False


def auto_budget(stage_defs, gpus: float | None, cluster_gpus: float) -> AutoBudget:
    """The budget the job's rule (`rebalancer_for`) gives the spec's `concurrency: auto` stages, or,
    when it has none, the stages that take GPUs (num_gpus auto or above 0) as if they asked for it."""
    auto = [s for s in stage_defs if s.resources.concurrency == "auto"]
    in_spec = bool(auto)
    if not auto:
        auto = [dataclasses.replace(s, resources=dataclasses.replace(s.resources, concurrency="auto"))
                for s in stage_defs if s.resources.num_gpus == "auto" or s.resources.num_gpus > 0]
    if not auto:
        return AutoBudget(note="no stage of this job takes GPUs (num_gpus is 0 everywhere)")
    if gpus is None and cluster_gpus <= 0:
        return AutoBudget(note="the cluster has no GPUs and the spec sets no stages.gpus "
                               "(--set stages.gpus=N shows the split of N)")
    try:
        rebalancer = rebalancer_for(auto, gpus, cluster_gpus)
    except SchedulingError as exc:
        return AutoBudget(note=str(exc))
    return AutoBudget(rebalancer.stages, rebalancer.slots, in_spec=in_spec)


def project(measured: Measurement, *, items: int, shard_size: int, prices: dict | None, auto: AutoBudget,
            units: Units) -> dict:
    """The whole job's throughput, bottleneck, wall time and cost, and what `concurrency: auto` would do.

    `items`: samples in the plan; `shard_size`: samples per shard (the last shard's write ends the job);
    `prices`: the spec's cost section as a dict (None: no cost); `units`: how the kind names its items."""
    per_item = {s.name: s.measured.per_item_s for s in measured.stages}
    if not all(per_item.values()):
        idle = ", ".join(name for name, t in per_item.items() if not t)
        raise ValueError(f"no measured seconds per item for {idle}: nothing to project from")
    split = _auto_split(per_item, auto)
    actors = {s.name: s.actors for s in measured.stages}
    if split is not None and auto.in_spec:
        actors.update(split["split"])  # the job runs the rebalancer's split
    chain = _chain(measured, per_item, actors, items, shard_size, units)
    held_s = measured.actors_s + chain["stream_s"]
    gpu_s = sum(actors[s.name] * s.num_gpus * held_s for s in measured.stages if s.name != WRITE)
    cpu_s = sum(actors[s.name] * s.num_cpus * held_s for s in measured.stages if s.name != WRITE)
    cpu_s += sum(items * per_item[s.name] * s.num_cpus for s in measured.stages if s.name == WRITE)
    if split is not None:
        split.update(_chain(measured, per_item, {**actors, **split["split"]}, items, shard_size, units))
    return {
        "actors": actors,
        "per_item_s": {name: round(t, 6) for name, t in per_item.items()},
        **chain,
        "gpu_hours": round(gpu_s / 3600, 8),
        "cpu_hours": round(cpu_s / 3600, 8),
        "cost": cost_of(gpu_s / 3600, cpu_s / 3600, prices, items),
        "auto": split if split is not None else {"note": auto.note},
    }


def _chain(measured: Measurement, per_item: dict, actors: dict, items: int, shard_size: int, units: Units) -> dict:
    """Throughput, bottleneck, fill and wall time of the chain with `actors` per stage."""
    capacity = {name: actors[name] / t for name, t in per_item.items()}
    bottleneck = min(capacity, key=capacity.get)
    throughput = capacity[bottleneck]
    # One batch through every stage (a whole shard through the write), less the bottleneck's own.
    latency = {s.name: (shard_size * per_item[s.name] if s.name == WRITE else s.measured.busy_s) for s in measured.stages}
    fill_s = sum(latency.values()) - latency[bottleneck]
    stream_s = fill_s + items / throughput
    others = ", ".join(f"{name} {_rate(c)}/s" for name, c in capacity.items() if name != bottleneck)
    slots = ("write slot" if bottleneck == WRITE else "actor") + ("" if actors[bottleneck] == 1 else "s")
    why = (f"lowest capacity: {per_item[bottleneck]:.4g} s per {units.singular} x {actors[bottleneck]} {slots} "
           f"= {_rate(throughput)} {units.plural}/s" + (f"; others: {others}" if others else ""))
    return {
        "capacity_items_per_s": {name: round(c, 4) for name, c in capacity.items()},
        "bottleneck": {"stage": bottleneck, "why": why},
        "items_per_s": round(throughput, 4),
        "write_bound_items_per_s": round(capacity[WRITE], 4) if WRITE in capacity else None,
        "startup_s": round(measured.startup_s, 3),
        "fill_s": round(fill_s, 3),
        "stream_s": round(stream_s, 3),
        "wall_s": round(measured.startup_s + stream_s, 3),
    }


def _auto_split(per_item: dict, auto: AutoBudget) -> dict | None:
    if not auto.slots:
        return None
    times = {name: per_item[name] for name in auto.stages}
    split = best_split(times, auto.slots)
    return {"slots": auto.slots, "split": split, "auto_stages_items_per_s": round(split_throughput(split, times), 4)}



def _rate(value: float) -> str:
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"
