"""One steady-state rule for every system the scheduler benchmark compares (latentmill and Ray Data).

Each run is reduced to the same record, a `SinkRecord`: when the run was started and, for every
item, the wall-clock time it became durable at the sink (latentmill: its shard's commit marker;
Ray Data: the file its write task wrote). `steady_state` turns a record into figures with the same
rule for both:

- start-up: from the run's start to the first item at the sink, reported on its own;
- warm-up and drain: the first and the last quarter of the items (by count) are left out, so the
  window is the middle half of the same items for both systems;
- rate: the least-squares slope of items completed against time over the window's completions;
- a window whose rate exceeds the ideal bound is rejected and reported, not clipped. Items reach
  the sink in groups (a shard, a file), so a window's ends can fall anywhere in a group: the rate
  may exceed the ideal by one group over the window's length before it is called impossible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WARM_UP_FRACTION = 0.25  # of the items, by count, before the window
DRAIN_FRACTION = 0.25  # of the items, by count, after it


@dataclass(frozen=True)
class SinkRecord:
    """Per-item completion times at the sink of one run (wall clock, seconds since the epoch)."""

    began: float
    completions: tuple[float, ...]  # sorted, one entry per item

    @classmethod
    def from_groups(cls, began: float, groups: list[tuple[float, int]]) -> SinkRecord:
        """From (time, items) pairs: a shard committed or a file written at `time` holding `items`."""
        return cls(began, tuple(sorted(t for t, n in groups for _ in range(n))))


def _window(completions: tuple[float, ...]) -> tuple[int, int]:
    """Indices [first, last] of the window's items: after the warm-up quarter, before the drain."""
    n = len(completions)
    return int(np.ceil(WARM_UP_FRACTION * n)), int(np.floor((1 - DRAIN_FRACTION) * n)) - 1


def _slope(times: np.ndarray, done: np.ndarray) -> float:
    return float(np.polyfit(times - times[0], done, 1)[0])


def steady_state(record: SinkRecord, ideal_items_per_s: float) -> dict:
    """Items/s in the steady window, start-up, whole-run rate; `rejected` says why a window's rate
    is not reported as `items_per_s` (too few completions, or above the ideal)."""
    items = len(record.completions)
    result = {"items": items, "startup_s": None, "items_per_s": None, "measured_items_per_s": None,
              "window_s": None, "window_items": 0, "whole_run_items_per_s": None, "rejected": None}
    if not items:
        result["rejected"] = "no item reached the sink"
        return result
    times = np.asarray(record.completions)
    result["startup_s"] = float(times[0] - record.began)
    result["whole_run_items_per_s"] = items / float(times[-1] - record.began) if times[-1] > record.began else None
    first, last = _window(record.completions)
    # Cumulative items at each distinct completion time in the window (a group counts once, whole).
    stamps, counts = np.unique(times[first:last + 1], return_counts=True)
    if len(stamps) < 3:
        result["rejected"] = f"{len(stamps)} distinct completion times in the window (need 3)"
        return result
    rate = _slope(stamps, np.cumsum(counts).astype(float))
    span = float(stamps[-1] - stamps[0])
    largest_group = int(np.unique(times, return_counts=True)[1].max())
    result.update(measured_items_per_s=rate, window_s=span, window_items=int(counts.sum()))
    allowed = ideal_items_per_s + largest_group / span
    if rate > allowed:
        result["rejected"] = (f"window rate {rate:.1f} items/s exceeds the ideal {ideal_items_per_s:.1f} "
                              f"(+ one group of {largest_group} items over {span:.1f} s = {allowed:.1f})")
    else:
        result["items_per_s"] = rate
    return result


def summary(values: list[float | None]) -> dict:
    """Median and spread of repeated runs' figures; rejected (None) values are counted, not used."""
    kept = sorted(v for v in values if v is not None)
    if not kept:
        return {"median": None, "min": None, "max": None, "runs": len(values), "kept": 0}
    return {"median": float(np.median(kept)), "min": kept[0], "max": kept[-1], "runs": len(values),
            "kept": len(kept)}
