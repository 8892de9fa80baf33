"""Turn a validated spec into a pipeline job, and run it on the current (or a new local) Ray cluster."""

from __future__ import annotations

import logging
import os

from jobs.spec import JobSpec
from pipelines.faults import Fault
from pipelines.models.fingerprint import decoder_fingerprint, model_fingerprint
from pipelines.plan import Plan, build_plan
from pipelines.runner import GenerationJob, run_generation
from pipelines.sources.prompts import read_prompts

# Libraries' progress bars and notices would drown the job's own progress line.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "1",
}


def plan_for(spec: JobSpec) -> Plan:
    prompts = list(spec.prompts.inline) if spec.prompts.inline is not None else read_prompts(spec.prompts.file)
    return build_plan(
        prompts,
        images_per_prompt=spec.prompts.images_per_prompt,
        num_images=spec.num_images,
        seed=spec.seed,
        samples_per_shard=spec.output.samples_per_shard,
    )


def weights_identity(spec: JobSpec) -> dict:
    """Which weights the model and decoder references mean now (pipelines/models/fingerprint.py)."""
    import decoders

    return {
        "model": model_fingerprint(spec.model.reference),
        "decoder": decoder_fingerprint(spec.decoder, tuple(decoders.available())),
    }


def generation_job(spec: JobSpec, plan: Plan | None = None, faults: tuple[Fault, ...] = ()) -> GenerationJob:
    return GenerationJob(
        name=spec.name,
        plan=plan or plan_for(spec),
        model=spec.model,
        sampler=spec.sampler,
        decoder=spec.decoder,
        decoder_tiling=spec.decoder_tiling,
        output=spec.output,
        stages=spec.stages,
        identity={**spec.identity(), "weights": weights_identity(spec)},
        spec=spec.to_dict(),
        faults=faults,
        cost=spec.cost,
    )


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
        runtime_env={"env_vars": env},
    )


def run_job(
    spec: JobSpec,
    *,
    address: str | None = None,
    progress: bool = True,
    start_timeout_s: float = 900.0,
    retry_failed: bool = False,
    faults: tuple[Fault, ...] = (),
    check_full: bool = False,
    wait: bool = False,
) -> dict:
    """Run the job; Ray is connected to (or started) only when there is something to generate."""
    job = generation_job(spec, faults=faults)
    return run_generation(
        job,
        connect=lambda: connect_ray(address),
        progress=progress,
        start_timeout_s=start_timeout_s,
        retry_failed=retry_failed,
        check_full=check_full,
        wait=wait,
    )
