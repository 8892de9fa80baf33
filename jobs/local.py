"""Turn a validated spec into a pipeline, and run it on the current (or a new local) Ray cluster."""

from __future__ import annotations

import logging
import os

from jobs.kinds import kind_of
from jobs.spec import with_absolute_paths
from pipelines.errors import ConfigError
from pipelines.faults import Fault
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


def connect_ray(address: str | None = None) -> None:
    """Use the Ray cluster at `address` (or RAY_ADDRESS); with neither, start a local one."""
    import ray

    if ray.is_initialized():
        return
    env = {**QUIET_ENV, **{k: v for k, v in os.environ.items() if k == "LATENTMILL_CACHE"}}
    os.environ.update(QUIET_ENV)
    ray.init(
        address=address or os.environ.get("RAY_ADDRESS"),
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
        runtime_env={"env_vars": env, "worker_process_setup_hook": "pipelines.worker_setup.quiet_known_noise"},
    )


def run_job(
    spec,
    *,
    address: str | None = None,
    progress: bool = True,
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
        return kind.run(spec, progress=progress, connect=lambda: connect_ray(address), wait=wait)
    from pipelines.runner import run_pipeline  # Ray: not needed to plan or for --dry-run

    pipeline = pipeline_for(spec, faults=faults)
    for fault in faults:
        if fault.stage not in pipeline.stage_names:
            raise ConfigError("--inject-fault", "", detail=f"a {spec.kind} job has no stage {fault.stage!r} "
                              f"(its stages: {', '.join(pipeline.stage_names)})")
    return run_pipeline(
        pipeline,
        connect=lambda: connect_ray(address),
        progress=progress,
        start_timeout_s=start_timeout_s,
        stall_timeout_s=stall_timeout_s,
        retry_failed=retry_failed,
        check_full=check_full,
        wait=wait,
    )
