"""What the scheduler benchmark's modules share (scheduler, memory, raydata): resources of the
synthetic stages, the steady-state rate of a run's commits, and running one measurement in a child."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

STAGE_CPUS = 0.01  # per synthetic actor: it sleeps; this only lets 64 actors fit on 2 cores
WRITE_CPUS = 0.1
WRITE_SLOTS = 2


# Without knowing a run's shards in flight: from 10% to 80% of the commits (the Ray Data peer).
STEADY_LOW, STEADY_HIGH = 0.1, 0.8


def steady_fractions(in_flight: int, shards: int) -> tuple[float, float]:
    """The steady state of a run that keeps `in_flight` shards active: after the first `in_flight`
    commits (by then every active shard was activated after the fill began, so the work done ahead
    of the commits has reached its level) and before the last `in_flight` (the drain: the to-do
    is empty, actors of the first stage go idle, and shards already far along commit faster than
    the bottleneck's pace). Runs are sized to hold at least 4x their shards in flight."""
    low, high = in_flight / shards, 1 - in_flight / shards
    return (low, high) if low < high else (STEADY_LOW, STEADY_HIGH)


def steady_window(events: list[tuple[float, int]], low: float = STEADY_LOW, high: float = STEADY_HIGH,
                  after: float = 0.0) -> tuple[float, float, int] | None:
    """(start, end, items) of the steady state: from the commit at which `low` of the items were
    done (and not before time `after`) to the one at which `high` were; items committed after the
    start, up to and including the end."""
    events = sorted(events)
    total = sum(n for _, n in events)
    done, start, counted = 0, None, 0
    for t, n in events:
        done += n
        if start is None:
            if done >= low * total and t >= after:
                start = t
            continue
        counted += n
        if done >= high * total:
            return (start, t, counted) if t > start else None
    return None


def steady_rate(events: list[tuple[float, int]], low: float = STEADY_LOW, high: float = STEADY_HIGH,
                after: float = 0.0) -> float | None:
    """Items/s in the steady state: the least-squares slope of items committed against time over
    the commits of the steady window. Shards finish in bursts; the ratio of the window's end points
    moves by up to one burst with where the ends fall in theirs, the slope through every commit
    hardly at all."""
    window = steady_window(events, low, high, after)
    if window is None:
        return None
    start, end, _ = window
    times, done, total = [], [], 0
    for t, n in sorted(events):
        total += n
        if start <= t <= end:
            times.append(t)
            done.append(total)
    t = np.asarray(times) - times[0]
    return float(np.polyfit(t, np.asarray(done, dtype=float), 1)[0])


def synthetic_kwargs(profile: dict, name: str, time_scale: float, latent_shape: tuple) -> dict:
    """SyntheticStage arguments of a profile's stage; the last stage emits files."""
    s = profile["stages"][name]
    return {"per_item_s": s["per_item_s"], "emits": "files" if name == list(profile["stages"])[-1] else "latents",
            "time_scale": time_scale, "latent_shape": latent_shape,
            "changes": tuple((c["from_index"], c["per_item_s"]) for c in s.get("changes", ()))}


def run_in_child(job: dict) -> dict:
    command = [sys.executable, "-m", "jobs.bench.scheduler", "--child", json.dumps(job)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child for {job.get('name')} at {job.get('gpus')} GPUs failed:\n"
                           f"{done.stderr[-3000:]}")
    return json.loads(lines[-1])
