"""Turn a validated spec into a pipeline, and run it on the current (or a new local) Ray cluster."""

from __future__ import annotations

import contextlib
import logging
import os
import time

from jobs.kinds import kind_of
from jobs.ray_connect import connecting
from jobs.ray_logs import ray_logs_aside
from jobs.ray_reaper import start_reaper
from jobs.spec import with_absolute_paths
from pipelines.errors import ConfigError
from pipelines.faults import Fault
from pipelines.observe.phases import phase
from pipelines.pipeline import Pipeline

# Libraries' progress bars and notices would drown the job's own progress line.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "1",
}


def plan_for(spec):
    return kind_of(spec).plan(spec)


def pipeline_for(spec, plan=None, faults: tuple[Fault, ...] = ()) -> Pipeline:
    kind = kind_of(spec)
    return kind.pipeline(spec, plan if plan is not None else kind.plan(spec), faults)


_reaper = None  # the watcher's Popen: its stdin pipe must stay open while this driver lives


def _keep_reaper(process) -> None:
    global _reaper
    _reaper = process


def check_faults(spec, faults: tuple[Fault, ...], pipeline: Pipeline | None) -> None:
    """Each fault names a stage of the job's pipeline (`None`: a kind that is no shard pipeline has none)."""
    if faults and pipeline is None:
        raise ConfigError("--inject-fault", "", detail=f"a {spec.kind} job has no stages to inject faults into")
    for fault in faults:
        if fault.stage not in pipeline.stage_names:
            raise ConfigError("--inject-fault", "", detail=f"a {spec.kind} job has no stage {fault.stage!r} "
                              f"(its stages: {', '.join(pipeline.stage_names)})")


def connect_ray(address: str | None = None, verbose: bool = True) -> None:
    """Use the Ray cluster at `address` (or RAY_ADDRESS); with neither, start a local one.

    `verbose=False` (the command line without --verbose): Ray's own lines (its logger's warnings,
    workers' output, task-retry notices) go to Ray's logs, not to the screen (jobs/ray_logs.py)."""
    # lazy: keeps ray out of processes that never call this
    import ray

    if ray.is_initialized():
        return
    env = {**QUIET_ENV, **{k: v for k, v in os.environ.items() if k == "LATENTMILL_CACHE"}}
    os.environ.update(QUIET_ENV)
    address = address or os.environ.get("RAY_ADDRESS")
    if address is None and _reaper is None:  # a local Ray: ended with this driver, even one killed (jobs/ray_reaper.py)
        _keep_reaper(start_reaper())
    phase(f"connecting to the Ray cluster at {address}" if address else "starting a local Ray")
    started = time.monotonic()
    with connecting(address) if address is not None else contextlib.nullcontext(), \
            ray_logs_aside(enabled=not verbose) as aside:
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=verbose,
            runtime_env={"env_vars": env, "worker_process_setup_hook": "pipelines.worker_setup.quiet_known_noise"},
        )
    resources = ray.cluster_resources()
    phase(f"Ray ready in {time.monotonic() - started:.1f} s: {resources.get('CPU', 0):g} CPUs, "
          f"{resources.get('GPU', 0):g} GPUs, {len(ray.nodes())} node(s)")
    if aside.path:
        phase(f"Ray's own lines go to {aside.path} (--verbose shows them here)")


def run_job(
    spec,
    *,
    address: str | None = None,
    progress=True,
    verbose: bool = True,
    start_timeout_s: float = 900.0,
    stall_timeout_s: float | None = None,
    retry_failed: bool = False,
    faults: tuple[Fault, ...] = (),
    check_full: bool = False,
    wait: bool = False,
) -> dict:
    spec = with_absolute_paths(spec)
    kind = kind_of(spec)
    if kind.run is not None:  # not a shard-writing pipeline (train-decoder: Ray Train)
        check_faults(spec, faults, None)
        return kind.run(spec, progress=progress, connect=lambda: connect_ray(address, verbose), wait=wait)
    from pipelines.runner import run_pipeline  # Ray: not needed to plan or for --dry-run

    pipeline = pipeline_for(spec, faults=faults)
    check_faults(spec, faults, pipeline)
    return run_pipeline(
        pipeline,
        connect=lambda: connect_ray(address, verbose),
        progress=progress,
        start_timeout_s=start_timeout_s,
        stall_timeout_s=stall_timeout_s,
        retry_failed=retry_failed,
        check_full=check_full,
        wait=wait,
    )
