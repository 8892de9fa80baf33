"""Conditioning images for video clips: any image source (`plan_images`) or N built-in images, and
each clip's seed (base seed + index) added to its sample, so a clip can be made again alone.

Built-in images are smooth colour patterns drawn from the sample index: the same on every machine,
nothing to download, readable by any image stage; `render_builtin` draws one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipelines.config import ConditioningInput
from pipelines.plan import ShardedPlan, sample_key

BUILTIN_VERSION = 1  # bump when render_builtin draws other pixels


def render_builtin(index: int, height: int, width: int) -> np.ndarray:
    """Built-in image `index`: uint8 (height, width, 3), waves and a disc whose colours and
    frequencies come from the index, so neighbouring images differ."""
    rng = np.random.default_rng([BUILTIN_VERSION, index])
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = rng.uniform(0.2, 0.8, 3)
    freq = rng.uniform(2, 8, 2)
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.12, 0.3)
    disc = ((y - cy) ** 2 + (x - cx) ** 2 < r**2).astype(np.float64)
    channels = [
        base[c] + 0.25 * np.sin(2 * np.pi * (freq[0] * x + c / 3)) * np.cos(2 * np.pi * freq[1] * y)
        + 0.3 * disc * (1 - 2 * base[c])
        for c in range(3)
    ]
    return (np.clip(np.stack(channels, -1), 0, 1) * 255).round().astype(np.uint8)


@dataclass(frozen=True)
class BuiltinImage:
    index: int
    key: str

    def as_dict(self) -> dict:
        return {"key": self.key, "index": self.index, "prompt": "", "source": {"builtin": self.index}}


@dataclass(frozen=True)
class BuiltinImagePlan(ShardedPlan):
    count: int
    samples_per_shard: int

    def __len__(self) -> int:
        return self.count

    def samples_between(self, start: int, stop: int) -> list[BuiltinImage]:
        return [BuiltinImage(i, sample_key(i)) for i in range(start, min(stop, self.count))]

    def table(self, start: int, stop: int) -> pa.Table:
        rows = self.samples_between(start, stop)
        return pa.table({
            "key": [s.key for s in rows],
            "source": [f"builtin:{s.index}" for s in rows],
            "shard": pa.array([s.index // self.samples_per_shard for s in rows], pa.int32()),
        })

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(["builtin", BUILTIN_VERSION, self.count, self.samples_per_shard]).encode()).hexdigest()


@dataclass(frozen=True)
class SeededSample:
    sample: object  # a sample of the wrapped plan
    seed: int

    @property
    def key(self) -> str:
        return self.sample.key

    @property
    def index(self) -> int:
        return self.sample.index

    def as_dict(self) -> dict:
        return {**self.sample.as_dict(), "seed": self.seed}


@dataclass(frozen=True, eq=False)
class SeededPlan(ShardedPlan):
    """`plan`'s samples, each with seed `seed + index` (its clip's noise), in plan.parquet too."""

    plan: object
    seed: int

    def __len__(self) -> int:
        return len(self.plan)

    @property
    def samples_per_shard(self) -> int:
        return self.plan.samples_per_shard

    def samples_between(self, start: int, stop: int) -> list[SeededSample]:
        return [SeededSample(s, self.seed + s.index) for s in self.plan.samples_between(start, stop)]

    def table(self, start: int, stop: int) -> pa.Table:
        table = self.plan.table(start, stop)
        seeds = pa.array(range(self.seed + start, self.seed + start + table.num_rows), pa.int64())
        return table.append_column("seed", seeds)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.plan.digest(), self.seed]).encode()).hexdigest()


def plan_conditioning(source: ConditioningInput, *, samples_per_shard: int, seed: int) -> SeededPlan:
    if source.builtin is not None:
        return SeededPlan(BuiltinImagePlan(source.builtin, samples_per_shard), seed)
    # lazy: keeps fsspec out of processes that never call this
    from pipelines.sources.images import plan_images

    return SeededPlan(plan_images(source.url, samples_per_shard=samples_per_shard, format=source.format,
                                  storage=source.storage), seed)
