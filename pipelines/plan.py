"""The plan: every sample's key, prompt and seed, grouped into shards, fixed before anything runs.

A sample's seed comes from the plan (base seed + index), never from batch composition or timing,
so the same spec always plans the same samples, and a rerun can tell exactly what is missing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

KEY_DIGITS = 9
SHARD_DIGITS = 5


@dataclass(frozen=True)
class Sample:
    index: int
    key: str
    prompt: str
    seed: int


@dataclass(frozen=True)
class ShardPlan:
    index: int
    name: str
    samples: tuple[Sample, ...]

    def batches(self, batch_size: int) -> list[tuple[Sample, ...]]:
        # Batches are cut within a shard, always the same way, so a regenerated shard is computed
        # with the same batch composition as the first time.
        return [self.samples[i : i + batch_size] for i in range(0, len(self.samples), batch_size)]


@dataclass(frozen=True)
class Plan:
    samples: tuple[Sample, ...]
    samples_per_shard: int

    @property
    def shards(self) -> list[ShardPlan]:
        n = self.samples_per_shard
        return [
            ShardPlan(i, shard_name(i), self.samples[start : start + n])
            for i, start in enumerate(range(0, len(self.samples), n))
        ]

    def digest(self) -> str:
        h = hashlib.sha256()
        for s in self.samples:
            h.update(json.dumps([s.key, s.prompt, s.seed]).encode())
        h.update(str(self.samples_per_shard).encode())
        return h.hexdigest()


def sample_key(index: int) -> str:
    return f"{index:0{KEY_DIGITS}d}"


def shard_name(index: int) -> str:
    return f"{index:0{SHARD_DIGITS}d}"


def build_plan(
    prompts: list[str],
    *,
    images_per_prompt: int,
    num_images: int | None,
    seed: int,
    samples_per_shard: int,
) -> Plan:
    """Each prompt gets `images_per_prompt` consecutive samples; past the end, prompts cycle."""
    total = num_images if num_images is not None else len(prompts) * images_per_prompt
    samples = tuple(
        Sample(index=i, key=sample_key(i), prompt=prompts[(i // images_per_prompt) % len(prompts)], seed=seed + i)
        for i in range(total)
    )
    return Plan(samples=samples, samples_per_shard=samples_per_shard)
