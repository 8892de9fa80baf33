"""What an estimate measured: per stage its actors, resources and the times of two batches (a warm-up
batch, reported but left out, and the measured one), and how long start-up took. Plain data: the
measuring (jobs/estimate/measure.py) fills it, the projection (jobs/estimate/project.py) reads it."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BatchTime:
    items: int
    busy_s: float  # measured inside the actor (the write task), as the run's accounting measures it
    started_at: float | None = None  # Unix time the actor began the batch (None for the write)

    @property
    def per_item_s(self) -> float | None:
        return self.busy_s / self.items if self.items else None


@dataclass(frozen=True)
class StageTimes:
    """One stage. `actors`: what the spec runs it with (for `write`: shards written at once);
    `load_s`: the slowest of its actors' model loads (None for the write, which loads nothing)."""

    name: str
    actors: int
    batch_size: int
    num_cpus: float
    num_gpus: float
    warmup: BatchTime
    measured: BatchTime
    load_s: float | None = None
    compile_s: float | None = None

    def as_dict(self) -> dict:
        return {**asdict(self), "warmup": _batch(self.warmup), "measured": _batch(self.measured)}


@dataclass(frozen=True)
class Measurement:
    """The stages in chain order, the write last; `ray_s`: connecting to (or starting) Ray;
    `actors_s`: from asking for the actors to all of them ready (models loaded)."""

    stages: tuple[StageTimes, ...]
    ray_s: float
    actors_s: float
    cluster: dict  # {"CPU": n, "GPU": n} the estimate ran on

    @property
    def startup_s(self) -> float:
        return self.ray_s + self.actors_s


def _batch(batch: BatchTime) -> dict:
    per_item = batch.per_item_s
    return {"items": batch.items, "s": round(batch.busy_s, 4), "s_per_item": None if per_item is None else round(per_item, 5),
            "started_at": batch.started_at}
