"""Fault injection, to prove on real runs that failures are retried, recorded and never lost.

`latentmill run --inject-fault STAGE:KIND:KEY[:TIMES]` makes a stage raise for one sample
(`raise`) or return NaN latents for it (`nan`, a stage that returns latents), on its first TIMES attempts or on
every attempt. `write:stall:SHARD` makes the write task of shard SHARD stop for a minute halfway
through its tar, so that a test can kill it there. The faults fire inside the real stage actors
and write tasks; nothing else changes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from pipelines.errors import ConfigError

KINDS = ("raise", "nan", "stall")
STALL_S = 60.0


class InjectedFault(RuntimeError):
    pass


@dataclass(frozen=True)
class Fault:
    stage: str
    kind: str
    key: str
    times: int | None = None  # None: every attempt

    @classmethod
    def parse(cls, text: str) -> "Fault":
        parts = text.split(":")
        # STAGE is any of the job's stages or write: jobs/local.py checks it against the pipeline's.
        if len(parts) not in (3, 4) or not parts[0] or parts[1] not in KINDS or not parts[2]:
            raise ConfigError(
                "--inject-fault", "", detail=f"{text!r}: expected STAGE:KIND:KEY[:TIMES] with STAGE one of the job's "
                f"stages or write, KIND in {KINDS}"
            )
        if parts[1] == "nan" and parts[0] == "write":
            raise ConfigError("--inject-fault", "", detail=f"{text!r}: nan faults corrupt the latents a stage returns")
        if (parts[1] == "stall") != (parts[0] == "write"):
            raise ConfigError("--inject-fault", "", detail=f"{text!r}: the write stage only stalls (write:stall:SHARD)")
        times = None
        if len(parts) == 4:
            if not parts[3].isdigit() or int(parts[3]) < 1:
                raise ConfigError("--inject-fault", "", detail=f"{text!r}: TIMES must be a positive integer")
            times = int(parts[3])
        return cls(parts[0], parts[1], parts[2], times)

    def fires(self, stage: str, keys: list[str], attempt: int) -> bool:
        return self.stage == stage and self.key in keys and (self.times is None or attempt < self.times)


def before_stage(faults: tuple[Fault, ...], stage: str, keys: list[str], attempt: int) -> None:
    for fault in faults:
        if fault.kind == "raise" and fault.fires(stage, keys, attempt):
            raise InjectedFault(f"injected fault in {stage} for sample {fault.key} (attempt {attempt})")


def after_stage(faults: tuple[Fault, ...], stage: str, result: dict, attempt: int) -> None:
    for fault in faults:
        if fault.kind == "nan" and fault.fires(stage, result["keys"], attempt):
            latents = np.array(result["latents"])  # writable copy
            latents[result["keys"].index(fault.key)] = np.nan
            result["latents"] = latents


def during_write(faults: tuple[Fault, ...], shard_name: str) -> None:
    for fault in faults:
        if fault.kind == "stall" and fault.key == shard_name:
            time.sleep(STALL_S)
