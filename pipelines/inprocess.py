"""A stage pool that runs its stage at once in the driver's own process, without Ray.

The shard scheduler talks to pools and a runtime, not to Ray (pipelines/scheduler.py), so its
bookkeeping can run alone: the scheduler's unit tests drive it with these pools, and
`latentmill bench scheduler --memory` measures the driver's memory over 10 million samples with
them. A call returns refs that are already done.
"""

from __future__ import annotations

import time

from pipelines.observe.accounting import task_load
from pipelines.scheduler import CALLS_PER_ACTOR


class Done:
    """A finished call: its value, or the exception it raised."""

    def __init__(self, value=None, error: Exception | None = None):
        self.value, self.error = value, error


class InProcessPool:
    """`fn(batch) -> batch` runs at submit time; `actors` only sets how many calls may be in flight."""

    def __init__(self, name: str, fn, actors: int = 1, busy_s: float = 0.001):
        self.name, self.fn, self.max_actors, self.busy_s = name, fn, actors, busy_s
        self.in_flight = 0

    def scale_for(self, backlog, spare_cpus):
        pass  # a fixed number of "actors"

    def free_slots(self) -> int:
        return CALLS_PER_ACTOR * self.max_actors - self.in_flight

    def held_cpus(self) -> float:
        return 0.0

    def submit(self, payload, attempt: int = 0):
        batch = payload.value if isinstance(payload, Done) else payload
        self.in_flight += 1
        result = self.fn(batch)
        stats = {"items": len(result["keys"]), "busy_s": self.busy_s, "started_at": time.time()}
        return Done(result), Done(stats), None

    def release(self, member, dead: bool = False) -> None:
        self.in_flight -= 1

    def note_process(self, member, pid) -> None:
        return None  # one process: nothing is ever restarted

    def describe_death(self, member) -> str:
        return f"stage {self.name}: a call failed as if its actor died; its batch goes back to the first stage"

    def live_actors(self) -> int:
        return self.max_actors

    def load(self, queued: int):
        return task_load(self.max_actors, self.in_flight, queued, 0.0)
