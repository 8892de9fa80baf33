"""The plan: every sample's key, prompt and seed, grouped into shards, fixed before anything runs.

A sample's seed comes from the plan (base seed + index), never from batch composition or timing,
so the same spec always plans the same samples, and a rerun can tell exactly what is missing.
Samples are computed from their index on demand: a plan of 10 million samples costs no memory
beyond its prompt list.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterator, Sequence

import pyarrow as pa

from pipelines.errors import ConfigError

MAX_SEED = 2**63 - 1  # seeds are int64 in plan.parquet and in torch generators
KEY_DIGITS = 9
SHARD_DIGITS = 5


@dataclass(frozen=True)
class Sample:
    index: int
    key: str
    prompt: str
    seed: int

    def as_dict(self) -> dict:
        return {"key": self.key, "index": self.index, "prompt": self.prompt, "seed": self.seed}


@dataclass(frozen=True)
class ShardPlan:
    index: int
    name: str
    samples: tuple[Sample, ...]


class ShardedPlan:
    """What every plan shares: consecutive runs of `samples_per_shard` samples make a shard.

    A plan gives `__len__`, `samples_per_shard` and `samples_between(start, stop)`; a sample has
    `.key`, `.index` and `.as_dict()` (what is sent to stages).
    """

    samples_per_shard: int

    def samples_between(self, start: int, stop: int) -> Sequence:
        raise NotImplementedError

    def sample(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.samples_between(index, index + 1)[0]

    def samples(self) -> Iterator:
        for start in range(0, len(self), ITERATION_CHUNK):
            yield from self.samples_between(start, min(start + ITERATION_CHUNK, len(self)))

    @property
    def num_shards(self) -> int:
        return -(-len(self) // self.samples_per_shard)

    def shard(self, index: int) -> "ShardPlan":
        start = index * self.samples_per_shard
        stop = min(start + self.samples_per_shard, len(self))
        return ShardPlan(index, shard_name(index), tuple(self.samples_between(start, stop)))

    def shard_size(self, index: int) -> int:
        return min(self.samples_per_shard, len(self) - index * self.samples_per_shard)


ITERATION_CHUNK = 8192  # samples made at once when iterating: bounds memory, amortises the per-call cost

PLAN_SCHEMA = pa.schema([("key", pa.string()), ("prompt", pa.string()), ("seed", pa.int64()), ("shard", pa.int32())])


@dataclass(frozen=True)
class Plan(ShardedPlan):
    """Each prompt gets `images_per_prompt` consecutive samples; past the end, prompts cycle."""

    prompts: tuple[str, ...]
    images_per_prompt: int
    total: int
    seed: int
    samples_per_shard: int

    def __len__(self) -> int:
        return self.total

    def sample(self, index: int) -> Sample:
        if not 0 <= index < self.total:
            raise IndexError(index)
        prompt = self.prompts[(index // self.images_per_prompt) % len(self.prompts)]
        return Sample(index=index, key=sample_key(index), prompt=prompt, seed=self.seed + index)

    def samples_between(self, start: int, stop: int) -> list[Sample]:
        return [self.sample(i) for i in range(start, stop)]

    def table(self, start: int, stop: int) -> pa.Table:
        """Rows `start` to `stop` of plan.parquet: key, prompt, seed, shard."""
        rows = self.samples_between(start, min(stop, self.total))
        columns = {
            "key": [s.key for s in rows],
            "prompt": [s.prompt for s in rows],
            "seed": [s.seed for s in rows],
            "shard": [s.index // self.samples_per_shard for s in rows],
        }
        return pa.table(columns, schema=PLAN_SCHEMA)

    def digest(self) -> str:
        h = hashlib.sha256()
        for s in self.samples():
            h.update(json.dumps([s.key, s.prompt, s.seed]).encode())
        h.update(str(self.samples_per_shard).encode())
        return h.hexdigest()


def sample_key(index: int) -> str:
    return f"{index:0{KEY_DIGITS}d}"


def key_fraction(key: str, salt: object) -> float:
    """A number in [0, 1) fixed by the key (and `salt`): picks a stable share of the samples, the
    same on every run (`key_fraction(key, salt) < fraction`)."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def shard_name(index: int) -> str:
    return f"{index:0{SHARD_DIGITS}d}"


def check_seeds(seed: int, total: int) -> None:
    if seed + total - 1 > MAX_SEED:
        raise ConfigError(
            "seed", "", detail=f"{seed} + {total} samples passes {MAX_SEED} (2^63 - 1): sample i gets seed + i, an int64"
        )


def build_plan(
    prompts: list[str],
    *,
    images_per_prompt: int,
    num_images: int | None,
    seed: int,
    samples_per_shard: int,
) -> Plan:
    total = num_images if num_images is not None else len(prompts) * images_per_prompt
    check_seeds(seed, total)
    return Plan(tuple(prompts), images_per_prompt, total, seed, samples_per_shard)
