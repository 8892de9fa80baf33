"""The rate a run finishes items at, and its ETA: smoothed, warm-up ignored.

The rate is of items finished by the chain's last stage (before the write): it moves every batch,
while commits move a whole shard at a time. It is an exponentially weighted rate: the items and the
seconds of each timeline interval are both summed with weight exp(-age / SMOOTHING_S), and the rate
is their ratio. Young runs get the plain mean rate (the weights are all near 1), old ones follow a
changed rate within about a minute, and a lumpy interval (a batch of 8 landing in one second) moves
it by a little, so the ETA does not swing. Intervals before the first item finished (models loading,
the pipeline filling) are left out: they would make the early rate, and the ETA, far too pessimistic.
"""

from __future__ import annotations

import math

SMOOTHING_S = 60.0


def finishing_stage(stage_names) -> str | None:
    """The last stage before the write (the write commits whole shards), else the only one."""
    names = [n for n in stage_names if n != "write"]
    return names[-1] if names else None


def smoothed_rate(points: list[dict], stage: str, smoothing_s: float = SMOOTHING_S) -> float | None:
    """Items/s of `stage` over timeline `points` (cumulative counts), or None before it has one."""
    if not points:
        return None
    now = points[-1]["t"]
    items = seconds = 0.0
    previous = None
    for point in points:
        count = point["items"].get(stage, 0)
        if previous is not None:
            weight = math.exp(-(now - point["t"]) / smoothing_s)
            items += weight * (count - previous["items"].get(stage, 0))
            seconds += weight * (point["t"] - previous["t"])
        if count > 0 or previous is not None:
            previous = point  # warm-up ends at the first point with an item finished
    return items / seconds if seconds > 0 else None


def eta_s(acc) -> float | None:
    """Seconds until the last stage has finished every item this run does (None: no rate yet)."""
    stage = finishing_stage(acc.stage_names or list(acc.stages))
    if stage is None:
        return None
    finished = acc.stages[stage].items_out if stage in acc.stages else 0
    remaining = acc.to_generate - finished
    if remaining <= 0:
        return 0.0
    rate = run_rate(acc)
    return remaining / rate if rate else None


def run_rate(acc) -> float | None:
    """The run's smoothed rate now (the timeline and the current counts)."""
    stage = finishing_stage(acc.stage_names or list(acc.stages))
    if stage is None:
        return None
    return smoothed_rate(acc.timeline + [acc.point(acc.elapsed())], stage)
