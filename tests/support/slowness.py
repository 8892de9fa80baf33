"""How much slower than an idle one this machine runs now, for sizing lease TTLs and deadlines.

The rule every test follows: a lease TTL or a bound on how long something takes is the value that
holds on an idle machine times `slowdown()`, so it holds on a machine up to 10 times slower (load
average 20 on 2 cores: each runnable process gets a tenth of a core) and costs nothing when idle.
Where a stretched bound passes the per-test timeout (pyproject.toml), the timeout ends the test.
"""

from __future__ import annotations

import os

MOST = 10.0


def slowdown() -> float:
    """Runnable processes per core over the last minute, between 1 (idle) and 10."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(MOST, max(1.0, os.getloadavg()[0] / cores))


def slack(idle_s: float) -> float:
    """`idle_s`, a duration that holds on an idle machine, stretched to hold on this one now."""
    return idle_s * slowdown()
