"""`latentmill run SPEC --estimate`: the spec's own pipeline (the builder a run uses), measured on
its real actors (jobs/estimate/measure.py), projected to the whole job (jobs/estimate/project.py).
The result is one JSON-able dict; jobs/estimate/render.py turns it into the table."""

from __future__ import annotations

import dataclasses

from jobs.estimate.measure import measure
from jobs.estimate.project import auto_budget, project
from jobs.kinds import KINDS, kind_of
from jobs.local import check_faults, connect_ray, pipeline_for
from jobs.spec import with_absolute_paths
from pipelines.errors import ConfigError
from pipelines.faults import Fault
from pipelines.observe.phases import phase


def estimate(spec, *, address: str | None = None, verbose: bool = True, start_timeout_s: float = 900.0,
             faults: tuple[Fault, ...] = ()) -> dict:
    """Measure the spec's stages on one batch each and project the whole job; the output is untouched."""
    spec = with_absolute_paths(spec)
    if kind_of(spec).pipeline is None:
        with_stages = ", ".join(name for name, kind in KINDS.items() if kind.pipeline is not None)
        raise ConfigError("--estimate", "", detail=f"a {spec.kind} job has no stage pools to measure "
                          f"(--estimate works for kinds with stages: {with_stages})")
    pipeline = pipeline_for(spec, faults=faults)
    check_faults(spec, faults, pipeline)
    plan, units = pipeline.plan, pipeline.units
    if not len(plan):
        raise ConfigError("--estimate", "", detail=f"the plan of {spec.name!r} holds no {units.plural}: nothing to estimate")
    phase(f"estimate of {len(plan)} {units.plural} ({plan.num_shards} shards): a warm-up batch through each stage "
          f"in turn, then one measured batch per stage, all at once; nothing is written to {pipeline.output.url}")
    measured = measure(pipeline, lambda: connect_ray(address, verbose), start_timeout_s)
    prices = dataclasses.asdict(pipeline.cost) if pipeline.cost is not None else None
    projection = project(measured, items=len(plan), shard_size=plan.samples_per_shard, prices=prices,
                         auto=auto_budget(pipeline.stages, pipeline.gpus, measured.cluster["GPU"]), units=units)
    return {
        "job": pipeline.name,
        "kind": pipeline.kind,
        "output_url": pipeline.output.url,
        "items": len(plan),
        "shards": plan.num_shards,
        "units": dataclasses.asdict(units),
        "cluster": measured.cluster,
        "startup": {"ray_s": round(measured.ray_s, 3), "actors_s": round(measured.actors_s, 3)},
        "stages": [stage.as_dict() for stage in measured.stages],
        "projection": projection,
    }
