"""A pool of Ray actors running one stage, pinned to the resources the spec gives it.

Each actor loads its stage once and is then called with one batch at a time. A call returns two
objects: the stage's output, which stays in Ray's object store and is passed by reference to the
next stage, and a small stats record, the only thing the driver fetches.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import ray

from pipelines import faults as fault_injection
from pipelines.errors import SchedulingError
from pipelines.observe.accounting import StageLoad
from pipelines.observe.gpu_telemetry import start_sampler
from pipelines.pipeline import stage_class
from pipelines.scheduler import CALLS_PER_ACTOR, error_cause
from pipelines.worker_setup import collector_paused

# Work queued per actor: one running and one waiting, so an actor never idles between calls.
RESOURCE_CHECK_S = 0.2


class StageActor:
    def __init__(self, stage_name: str, stage_cls: type, stage_kwargs: dict, threads: int, faults: tuple = ()):
        # The stage's module is imported by now (its class is an argument): set torch's threads if it
        # uses torch, without importing torch into actors that don't (synthetic stages, 64 per machine).
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(threads)
        self.stage_name = stage_name
        self.faults = faults
        started = time.perf_counter()
        with collector_paused():
            self.stage = stage_class(stage_cls)(**stage_kwargs)
        self.load_seconds = time.perf_counter() - started
        self.batches_run = 0
        self.gpu = start_sampler(stage_name, [str(g) for g in ray.get_gpu_ids()])

    def info(self) -> dict:
        context = ray.get_runtime_context()
        return {
            "stage": self.stage_name,
            "actor_id": context.get_actor_id(),
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": str(getattr(self.stage, "device", "cpu")),
            "load_seconds": self.load_seconds,
            "compile_s": getattr(self.stage, "compile_s", None),
            "gpu": self.gpu.summary() if self.gpu is not None else None,
        }

    def run(self, batch: dict, attempt: int = 0):
        """Run the stage on one batch (a dict with `keys`, see pipelines/pipeline.py)."""
        started_at = time.time()
        started = time.perf_counter()
        fault_injection.before_stage(self.faults, self.stage_name, batch["keys"], attempt)
        if self.gpu is not None:
            self.gpu.busy = True
        try:
            result = self.stage(batch)
        finally:
            if self.gpu is not None:
                self.gpu.busy = False
        fault_injection.after_stage(self.faults, self.stage_name, result, attempt)
        busy = time.perf_counter() - started
        # Per-sample stage times, rejected inputs and input facts travel with the data to the manifest.
        result["timings"] = {**batch.get("timings", {}), self.stage_name: busy / max(1, len(batch["keys"]))}
        rejected = {**batch.get("rejected", {}), **result.get("rejected", {})}
        if rejected:
            result["rejected"] = rejected
        input_facts = {**batch.get("input_facts", {}), **result.get("input_facts", {})}
        if input_facts:
            result["input_facts"] = input_facts
        self.batches_run += 1
        return result, {"items": len(result["keys"]), "busy_s": busy, "started_at": started_at,
                        "warm": self.batches_run > 1, "pid": os.getpid()}


_RemoteStageActor = ray.remote(StageActor)


@dataclass
class _Member:
    handle: ray.actor.ActorHandle
    ready_ref: ray.ObjectRef
    info: dict | None = None
    calls: int = 0


@dataclass
class StagePool:
    name: str
    stage_cls: type
    stage_kwargs: dict
    num_cpus: float
    num_gpus: float
    min_actors: int
    max_actors: int
    faults: tuple = ()
    max_restarts: int = 3
    # Actors wanted now, set by `resize` (concurrency auto); None: grow on demand up to max_actors.
    target: int | None = None
    members: list[_Member] = field(default_factory=list)
    # Members given up by `resize`: no new calls; killed (freeing their GPU) once their calls finish.
    retiring: list[_Member] = field(default_factory=list)
    _next_resource_check: float = 0.0

    def _new_actor(self) -> None:
        remote_cls = _RemoteStageActor.options(
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            # A killed actor process is restarted and its calls retried; a stage exception is not
            # retried here (the driver decides).
            max_restarts=self.max_restarts,
            max_task_retries=self.max_restarts,
        )
        threads = max(1, int(self.num_cpus))
        handle = remote_cls.remote(self.name, self.stage_cls, self.stage_kwargs, threads, self.faults)
        self.members.append(_Member(handle, handle.info.remote()))

    def start(self) -> None:
        for _ in range(self.target if self.target is not None else self.min_actors):
            self._new_actor()

    def wait_ready(self, timeout_s: float, step_s: float | None = None) -> bool:
        """Block until the first actors have loaded their models, or say why not. `step_s`: return
        after at most that long (or as soon as one more is ready) with whether all are ready."""
        pending = {m.ready_ref: m for m in self.members if m.info is None}
        deadline = time.monotonic() + timeout_s
        while pending:
            wait_s = max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1 if step_s else len(pending),
                                timeout=wait_s if step_s is None else min(step_s, wait_s))
            if not ready and time.monotonic() >= deadline:
                raise SchedulingError(
                    f"stage {self.name!r}: {len(pending)} of {len(self.members)} actors did not start within "
                    f"{timeout_s:.0f} s (each asks for num_cpus={self.num_cpus}, num_gpus={self.num_gpus}; "
                    f"cluster has {ray.cluster_resources()})"
                )
            for ref in ready:
                pending.pop(ref).info = self._get_info(ref)
            if step_s is not None:
                return not pending
        return True

    def note_process(self, member: _Member, pid: int | None) -> str | None:
        """What to tell the user when a member's call ran in a new process: Ray restarted it."""
        if pid is None or member.info is None or member.info.get("pid") in (None, pid):
            return None
        old, member.info = member.info["pid"], {**member.info, "pid": pid}
        number = self.members.index(member) + 1 if member in self.members else "?"
        return (f"stage {self.name}: actor {number} (process {old}) died; Ray restarted it as process {pid} "
                f"and retried its calls, nothing is lost")

    def describe_death(self, member: _Member) -> str:
        number = self.members.index(member) + 1 if member in self.members else "?"
        return (f"stage {self.name}: actor {number} is gone after {self.max_restarts} restarts; "
                f"its batch goes back to the first stage and a new actor starts")

    def ready_actors(self) -> int:
        return sum(1 for m in self.members if m.info is not None)

    def _get_info(self, ref) -> dict:
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise SchedulingError(f"stage {self.name!r}: an actor failed to start: {error_cause(exc)}") from None

    def poll_new_actors(self) -> None:
        pending = [m for m in self.members if m.info is None]
        if pending:
            ready, _ = ray.wait([m.ready_ref for m in pending], num_returns=len(pending), timeout=0)
            for m in pending:
                if m.ready_ref in ready:
                    m.info = self._get_info(m.ready_ref)

    def scale_for(self, backlog: int, spare_cpus: float) -> None:
        """Start actors the pool is short of, as far as the cluster has room now.

        Short of: below `target` when one is set (resize); else one more actor at a time when work
        waits and the pool is below max_actors. `spare_cpus`: CPUs no actor holds and no write task
        needs; taking more would starve writes.
        """
        self.poll_new_actors()
        if self.target is not None:
            missing = self.target - len(self.members)
        else:
            starting = any(m.info is None for m in self.members)
            grow = not starting and len(self.members) < self.max_actors and backlog > self.free_slots()
            missing = 1 if grow else 0
        # Asking Ray for free resources is a round trip: not on every loop turn while waiting for them.
        if missing <= 0 or time.monotonic() < self._next_resource_check:
            return
        self._next_resource_check = time.monotonic() + RESOURCE_CHECK_S
        free = ray.available_resources()
        cpus, gpus = min(spare_cpus, free.get("CPU", 0)), free.get("GPU", 0)
        while missing > 0 and cpus >= self.num_cpus and gpus >= self.num_gpus - 1e-9:
            self._new_actor()
            missing, cpus, gpus = missing - 1, cpus - self.num_cpus, gpus - self.num_gpus

    def resize(self, actors: int) -> None:
        """Aim for `actors`: the extra ones retire (idle ones first), the missing ones start when the
        resources of retired ones are free (see scale_for)."""
        self.target = actors
        extra = len(self.members) - actors
        if extra > 0:
            # Starting actors first (nothing to lose), then the least busy.
            by_cost = sorted(self.members, key=lambda m: (m.info is not None, m.calls))
            for member in by_cost[:extra]:
                self.members.remove(member)
                self.retiring.append(member)
            self._reap()
        self._next_resource_check = 0.0

    def _reap(self) -> None:
        for member in [m for m in self.retiring if m.calls == 0]:
            ray.kill(member.handle, no_restart=True)
            self.retiring.remove(member)

    def held_cpus(self) -> float:
        return (len(self.members) + len(self.retiring)) * self.num_cpus

    def free_slots(self) -> int:
        return sum(CALLS_PER_ACTOR - m.calls for m in self.members if m.info is not None)

    def submit(self, payload, attempt: int = 0) -> tuple[ray.ObjectRef, ray.ObjectRef, _Member]:
        member = min((m for m in self.members if m.info is not None), key=lambda m: m.calls)
        member.calls += 1
        result_ref, stats_ref = member.handle.run.options(num_returns=2).remote(payload, attempt)
        return result_ref, stats_ref, member

    def release(self, member: _Member, dead: bool = False) -> None:
        """A call finished; `dead`: its actor is gone for good (out of restarts), so replace it."""
        member.calls -= 1
        if member in self.retiring:
            if dead:
                self.retiring.remove(member)
            self._reap()
        elif dead and member in self.members:
            self.members.remove(member)
            if len(self.members) < max(self.min_actors, self.target or 0):
                self._new_actor()

    def load(self, queued: int) -> StageLoad:
        ready = [m for m in self.members if m.info is not None]
        return StageLoad(
            actors=len(ready),
            reserved=len(self.members) + len(self.retiring),
            queued=queued,
            free_slots=self.free_slots(),
            idle_actors=sum(1 for m in ready if m.calls == 0),
            cpus_per_actor=float(self.num_cpus),
            gpus_per_actor=float(self.num_gpus),
        )

    def live_actors(self) -> int:
        """Started actors on a live node. An actor whose node was lost still counts as started here
        (Ray restarts it elsewhere when it can), so its node is what tells."""
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        return sum(1 for m in self.members if m.info is not None and m.info["node_id"] in alive)

    def actor_infos(self) -> list[dict]:
        return [m.info for m in self.members if m.info is not None]

    def shutdown(self) -> None:
        for m in self.members + self.retiring:
            ray.kill(m.handle, no_restart=True)
        self.members.clear()
        self.retiring.clear()


def check_fits(asks: dict[str, tuple[float, float, int]]) -> None:
    """Fail fast when the cluster can never run the stages: `asks` maps stage -> (cpus, gpus, actors).

    Every actor must fit on one node, and the minimum actors of all stages must fit together, since
    they live for the whole job. Otherwise Ray would wait for resources forever.
    """
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    total_cpu = sum(n.get("CPU", 0) for n in nodes)
    total_gpu = sum(n.get("GPU", 0) for n in nodes)
    for stage, (cpus, gpus, _) in asks.items():
        if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
            raise SchedulingError(
                f"stage {stage!r} asks for num_cpus={cpus}, num_gpus={gpus} per actor, but no node has that "
                f"(cluster: {total_cpu:g} CPUs, {total_gpu:g} GPUs); lower stages.{stage} resources"
            )
    need_cpu = sum(c * n for c, _, n in asks.values())
    need_gpu = sum(g * n for _, g, n in asks.values())
    if need_cpu > total_cpu + 1e-9 or need_gpu > total_gpu + 1e-9:
        detail = ", ".join(f"{s}: {n} x (num_cpus={c}, num_gpus={g})" for s, (c, g, n) in asks.items())
        raise SchedulingError(
            f"the stages together need {need_cpu:g} CPUs and {need_gpu:g} GPUs ({detail}) but the cluster has "
            f"{total_cpu:g} CPUs and {total_gpu:g} GPUs; lower num_cpus/num_gpus or concurrency"
        )


class RayRuntime:
    """What the shard scheduler needs from Ray besides the pools: waiting, results and writes."""

    def __init__(self, write):
        self.write = write  # ShardWork -> ref of the shard's commit marker
        self.total_cpus = ray.cluster_resources().get("CPU", 0)

    @staticmethod
    def wait(refs: list, timeout: float) -> list:
        """Every ref ready now; if none, block (up to `timeout`) until one is."""
        ready = ray.wait(refs, num_returns=len(refs), timeout=0)[0]
        return ready or ray.wait(refs, num_returns=1, timeout=timeout)[0]

    @staticmethod
    def get(ref):
        return ray.get(ref)

    @staticmethod
    def is_actor_death(exc: BaseException) -> bool:
        return isinstance(exc, ray.exceptions.RayActorError)

    @staticmethod
    def discard(ref) -> None:
        """Fetch a failed call's other output so Ray does not log its error again as unhandled."""
        try:
            ray.get(ref)
        except ray.exceptions.RayError:
            pass
