"""Per-stage counts and busy time for one run, a progress line, and the run report."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field


@dataclass
class StageStats:
    batches: int = 0
    items: int = 0
    busy_s: float = 0.0
    first_start: float | None = None  # wall clock of the first batch's start

    def add(self, items: int, busy_s: float, started_at: float) -> None:
        self.batches += 1
        self.items += items
        self.busy_s += busy_s
        self.first_start = started_at if self.first_start is None else min(self.first_start, started_at)

    def as_dict(self) -> dict:
        return {
            "batches": self.batches,
            "items": self.items,
            "busy_s": round(self.busy_s, 4),
            "items_per_busy_s": round(self.items / self.busy_s, 3) if self.busy_s > 0 else None,
        }


@dataclass
class RunAccounting:
    run_id: str
    planned: int
    already_committed: int
    to_generate: int
    started_at: float = field(default_factory=time.time)
    written: int = 0
    stages: dict[str, StageStats] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def record(self, stage: str, *, items: int, busy_s: float, started_at: float) -> None:
        self.stages.setdefault(stage, StageStats()).add(items, busy_s, started_at)

    def committed(self, samples: int) -> None:
        self.written += samples

    def failure(self, stage: str, keys: str, error: str) -> None:
        self.failures.append({"stage": stage, "keys": keys, "error": error, "at": time.time()})

    def note(self, text: str) -> None:
        self.notes.append(text)

    def progress_line(self, label: str) -> str:
        elapsed = time.time() - self.started_at
        rate = self.written / elapsed if elapsed > 0 else 0.0
        remaining = self.to_generate - self.written
        eta = f"{remaining / rate:.0f}s" if rate > 0 else "?"
        stages = " ".join(f"{name} {s.items}" for name, s in self.stages.items())
        done = self.already_committed + self.written
        return f"[{label}] {done}/{self.planned} samples committed | {rate:.1f}/s | ETA {eta} | {stages}"

    def report(self, actors: list[dict]) -> dict:
        finished = time.time()
        wall = finished - self.started_at
        return {
            "run_id": self.run_id,
            "started": dt.datetime.fromtimestamp(self.started_at, dt.timezone.utc).isoformat(),
            "finished": dt.datetime.fromtimestamp(finished, dt.timezone.utc).isoformat(),
            "wall_s": round(wall, 3),
            "planned": self.planned,
            "already_committed": self.already_committed,
            "generated": self.written,
            "samples_per_s": round(self.written / wall, 3) if wall > 0 else None,
            "stages": {name: s.as_dict() for name, s in self.stages.items()},
            "actors": actors,
            "failures": self.failures,
            "notes": self.notes,
        }
