"""What a test left running on the session's shared Ray cluster: actors and drivers.

A job's actors are killed asynchronously when it ends, so what is still alive after a test is
given `grace_s` to exit on its own; then it is ended. Read from the GCS tables (the state API
needs the dashboard, which the test cluster does without).
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import ray
from ray._private import state
from ray._raylet import ActorID

from tests.support.slowness import slack

_ENDED_ACTOR_STATES = {"DEAD"}
# Ray Data's cluster-wide singletons: created by the first Dataset, they serve every later one
# (which finds them by name), so they are the cluster's, not a test's.
RAY_SERVICES = {"_StatsActor", "_AutoscalingCoordinatorActor"}


def live_actors() -> dict[str, str]:
    """actor id -> 'ClassName (name)' of every actor not dead yet."""
    return {actor_id: f"{info['ActorClassName']}{' ' + repr(info['Name']) if info['Name'] else ''}"
            for actor_id, info in state.actors().items()
            if info["State"] not in _ENDED_ACTOR_STATES and info["ActorClassName"] not in RAY_SERVICES}


def _kill_actor(actor_id: str) -> None:
    """Kill an actor for good, whoever created it: by handle where this process has one or can
    look it up by name (Ray restarts none then), else its worker process (a descendant: this
    process started the cluster)."""
    worker = ray._private.worker.global_worker
    try:
        worker.core_worker.kill_actor(ActorID.from_hex(actor_id), True)  # no restart
        return
    except ray.exceptions.ActorHandleNotFoundError:  # another job's actor
        pass
    info = state.actors(actor_id)
    named = {a["name"]: a["namespace"] for a in ray.util.list_named_actors(all_namespaces=True)}
    if info["Name"] in named:
        ray.kill(ray.get_actor(info["Name"], namespace=named[info["Name"]]), no_restart=True)
    elif info["Pid"] in {p.pid for p in psutil.Process().children(recursive=True)}:
        os.kill(info["Pid"], signal.SIGKILL)


def live_drivers() -> dict[str, int]:
    """job id -> driver pid of every driver connected to the cluster, this process's excepted."""
    own = ray.get_runtime_context().get_job_id()
    return {job["JobID"]: job["DriverPid"] for job in state.jobs() if not job["IsDead"] and job["JobID"] != own}


def end_leftovers(actors_before: set[str], grace_s: float | None = None) -> list[str]:
    """End the actors alive now that were not alive in `actors_before`, and every driver started
    from this process, and wait until the cluster has them dead; returns what had to be ended
    (what was still there after the grace time)."""
    actors, drivers = _wait_gone(actors_before, slack(2.0) if grace_s is None else grace_s)  # idle: a job's actors exit in a second
    ended = []
    descendants = {p.pid for p in psutil.Process().children(recursive=True)}
    for job_id, pid in drivers.items():
        if pid in descendants:  # never another user's process
            os.kill(pid, signal.SIGKILL)
            ended.append(f"driver of job {job_id} (pid {pid})")
        else:
            ended.append(f"driver of job {job_id} (pid {pid}, not started here: left alone)")
    for actor_id, name in actors.items():
        try:
            _kill_actor(actor_id)
        except (ray.exceptions.RayError, ValueError, psutil.Error, OSError):
            pass  # exited meanwhile
        ended.append(f"actor {name}")
    if ended:
        _wait_gone(actors_before, slack(10.0))  # the GCS marks them dead a moment after they are
    return ended


def _wait_gone(actors_before: set[str], wait_s: float) -> tuple[dict[str, str], dict[str, int]]:
    """The new actors and the drivers still alive after at most `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        actors = {a: name for a, name in live_actors().items() if a not in actors_before}
        drivers = live_drivers()
        if not (actors or drivers) or time.monotonic() >= deadline:
            return actors, drivers
        time.sleep(0.2)
