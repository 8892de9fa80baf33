"""The run report (OUTPUT/runs/RUN_ID.json): a run's recorded facts as figures, one JSON-able dict.

Valid while the run goes (the run report writer keeps it current) and at its end.
"""

from __future__ import annotations

import datetime as dt

from pipelines.observe.accounting import RunAccounting, StageStats
from pipelines.observe.eta import eta_s, run_rate


def ratio(a: float, b: float, digits: int = 4) -> float | None:
    return round(a / b, digits) if b > 0 else None


def stage_figures(s: StageStats, wall_s: float) -> dict:
    reserved = s.task_s if s.is_tasks else s.reserved_actor_s
    gpu_s = reserved * s.gpus_per_actor
    cpu_s = reserved * s.cpus_per_actor
    mean_actors = s.actor_s / s.observed_s if s.observed_s > 0 else float(s.actors_max)
    return {
        "items_in": s.items_in,
        "items_out": s.items_out,
        "items": s.items_out,  # = items_out (the name older reports used)
        "batches": s.batches,
        "failed_batches": s.failed_batches,
        "busy_s": round(s.busy_s, 4),
        "actor_s": round(s.actor_s, 4),
        "reserved_actor_s": round(reserved, 4),
        "idle_s": round(max(0.0, s.actor_s - s.busy_s), 4),
        "waiting_for_input_s": round(s.waiting_for_input_s, 3),
        "input_backlog_s": round(s.input_backlog_s, 3),
        "queued_batch_s": round(s.queued_batch_s, 3),
        "backpressured_s": round(s.backpressured_s, 3),
        "utilisation": ratio(s.busy_s, s.actor_s),
        "items_per_s": ratio(s.items_out, wall_s, 3),
        "items_per_busy_s": ratio(s.items_out, s.busy_s, 3),
        # What the stage could do with its mean actors if never starved: the bottleneck has the lowest.
        "capacity_items_per_s": ratio(s.items_out * mean_actors, s.busy_s, 3),
        "batch_s": s.service.summary(),
        "latency_s": s.latency.summary(),
        "actors": {"min": s.actors_min or 0, "max": s.actors_max, "mean": round(mean_actors, 3)},
        "observed_s": round(s.observed_s, 3),
        "kind": "tasks" if s.is_tasks else "actors",
        "cpus_per_actor": s.cpus_per_actor,
        "gpus_per_actor": s.gpus_per_actor,
        "gpu_s": round(gpu_s, 4),
        "cpu_s": round(cpu_s, 4),
        "gpu_s_per_item": ratio(gpu_s, s.items_out, 6),
        "cpu_s_per_item": ratio(cpu_s, s.items_out, 6),
        "service_hist": s.service.as_hist(),
        "latency_hist": s.latency.as_hist(),
    }


def cost_of(gpu_hours: float, cpu_hours: float, prices: dict | None, items: int) -> dict | None:
    """Money for resource-hours at the spec's prices; None when the spec gives no prices."""
    if prices is None:
        return None
    total = gpu_hours * prices["gpu_hour"] + cpu_hours * prices["cpu_hour"]
    return {
        "currency": prices.get("currency", "USD"),
        "gpu_hour": prices["gpu_hour"],
        "cpu_hour": prices["cpu_hour"],
        "total": round(total, 6),
        "per_1000_images": round(1000 * total / items, 6) if items else None,  # per 1,000 items (the old name)
    }


def run_report(acc: RunAccounting) -> dict:
    """The run report: every recorded fact, as figures."""
    now_wall = dt.datetime.now(dt.timezone.utc)
    wall = acc.elapsed()
    stages = {name: stage_figures(acc.stages[name], wall) for name in acc.chain_order(acc.stages)}
    gpu_hours = sum(s["gpu_s"] for s in stages.values()) / 3600
    cpu_hours = sum(s["cpu_s"] for s in stages.values()) / 3600
    timeline = list(acc.timeline)
    if not timeline or timeline[-1]["t"] < wall:
        timeline.append(acc.point(wall))
    eta = eta_s(acc) if acc.status == "running" else None
    steady = run_rate(acc)
    return {
        "run_id": acc.run_id,
        "job": acc.job,
        "status": acc.status,
        "error": acc.error,
        "stage_names": list(acc.stage_names) or list(stages),
        "units": acc.units,
        "started": dt.datetime.fromtimestamp(acc.started_at, dt.timezone.utc).isoformat(),
        "updated": now_wall.isoformat(),
        "updated_unix": round(now_wall.timestamp(), 3),
        "wall_s": round(wall, 3),
        "startup_s": round(acc.startup_s(), 3),
        "stream_start_t": None if acc.stream_start_t() is None else round(acc.stream_start_t(), 3),
        # From the first batch submitted to now (or the end): wall time minus setup and start-up.
        "stream_s": round(acc.stream_s(), 3),
        "planned": acc.planned,
        "already_committed": acc.already_committed,
        "to_generate": acc.to_generate,
        "generated": acc.written,
        "failed": acc.failed_samples,
        "samples_per_s": ratio(acc.written, wall, 3),  # overall: committed over the whole wall time, start-up included
        # The progress bar's rate (pipelines/observe/eta.py): the last stage's, smoothed, start-up left out.
        "steady_per_s": None if steady is None else round(steady, 3),
        "eta_s": None if eta is None else round(eta, 1),
        "gpu_hours": round(gpu_hours, 8),
        "cpu_hours": round(cpu_hours, 8),
        "cost": cost_of(gpu_hours, cpu_hours, acc.prices, acc.written),
        "stages": stages,
        "timeline": timeline,
        "actors": acc.actors,
        "failures": acc.failures,
        "notes": acc.notes,
    }
