"""The engine's collaborators faked in this process, for scheduler tests without Ray: a stage pool
that runs its function at submit time (and can fail chosen batches), and a runtime that records
each shard's write instead of writing it."""

from __future__ import annotations

import time

from pipelines.inprocess import Done as Ref
from pipelines.inprocess import InProcessPool
from pipelines.plan import build_plan


class ActorDied(Exception):
    pass


class FakePool(InProcessPool):
    """Runs `fn(batch)` at submit time; `fail(keys, attempt)` may return an exception to raise."""

    def __init__(self, name, fn, actors=1, fail=None):
        super().__init__(name, fn, actors)
        self.fail = fail
        self.calls, self.peak_in_flight, self.released_dead = [], 0, 0

    def submit(self, payload, attempt=0):
        batch = payload.value if isinstance(payload, Ref) else payload
        self.calls.append((tuple(batch["keys"]), attempt))
        error = self.fail(batch["keys"], attempt) if self.fail else None
        if error is not None:
            self.in_flight += 1
            return Ref(error=error), Ref(error=error), object()
        refs = super().submit(payload, attempt)
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return refs

    def release(self, member, dead=False):
        super().release(member, dead)
        self.released_dead += dead


class FakeRuntime:
    total_cpus = 2.0

    def __init__(self):
        self.written: dict[str, dict] = {}
        self.active_peak = 0

    def wait(self, refs, timeout):
        ready = [r for r in refs if not getattr(r, "hung", False)]
        if not ready:
            time.sleep(0.01)
        return ready[:1]

    def get(self, ref):
        if ref.error is not None:
            raise ref.error
        return ref.value

    def is_actor_death(self, exc):
        return isinstance(exc, ActorDied)

    def discard(self, ref):
        pass

    def write(self, work):
        outputs = [r.value for r in work.outputs]
        keys = [k for out in outputs for k in out["keys"]]
        self.written[work.shard.name] = {"keys": keys, "outputs": outputs, "failed": list(work.failed),
                                         "repair": work.repair}
        marker = {"samples": len(keys), "failed": len(work.failed), "write_seconds": 0.001}
        return Ref(marker)


def add(stage):
    return lambda batch: {"keys": batch["keys"], "trail": [*batch.get("trail", []), stage]}


def first(batch):
    return {"keys": batch["keys"], "seeds": [s["seed"] for s in batch["samples"]], "trail": ["first"]}


def plan_of(total=10, per_shard=4):
    return build_plan(["a", "b"], images_per_prompt=1, num_images=total, seed=100, samples_per_shard=per_shard)
