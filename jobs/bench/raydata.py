"""The Ray Data peer of `latentmill bench scheduler`: the same synthetic stages as Ray Data
`map_batches` actor pools on the same GPUs, then `write_webdataset`, in three configurations.

`tuned`, as a competent Ray Data user would configure it for this job (each choice says why):
  - one fixed-size actor pool per stage (`concurrency` = latentmill's split for that stage) with
    latentmill's per-actor resources (1 GPU, STAGE_CPUS CPUs), and `batch_size` = latentmill's;
  - blocks of one shard (`override_num_blocks` = items / shard size): Ray Data runs a task per block
    on an actor, so blocks smaller than a shard only add per-task work and fewer blocks than actors
    leave actors idle;
  - light read tasks (`num_cpus` = STAGE_CPUS): `range` produces integers; at the default 1 CPU a
    read task would hold one of the 2 cores the executor and the writes need;
  - `min_rows_per_file` = the shard size, so files hold whole shards' worth of rows as latentmill's do;
  - writes with latentmill's write slots and CPUs (`concurrency` = WRITE_SLOTS, `num_cpus` = WRITE_CPUS);
  - the payload is already PNG/JSON bytes: `encoder=None`.
  Asked what a Ray Data maintainer would change beyond these: measure the steady state without
  its actor start-up (done for both systems by jobs/bench/steady.py) and leave the executor's
  resource limits to Ray Data, which derives them from the cluster; nothing else in DataContext is
  changed (progress bars off only). Not checked with a maintainer.
`from_items`: `tuned` with the ids made in the driver (`ray.data.from_items`, one block per shard)
instead of by read tasks. Light read tasks let Ray run dozens at once, each in a worker process of
its own (up to 165 Ray processes, load average 140, at 32 GPUs on 2 cores); blocks made in the driver
need none (docs/scheduler-benchmark.md).
`defaults`: the same stage pools and batch sizes (the model's choice, not Ray Data's), everything
else at Ray Data's defaults: `ray.data.range(n)` blocks and read CPUs, writes at 1 CPU with Ray
Data's concurrency and file sizes.

Each run yields a `SinkRecord`: every row's completion time is the mtime of the file its write task
wrote (the row is durable then), the same kind of record as latentmill's commit markers.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
import time

import numpy as np

from jobs.bench.common import STAGE_CPUS, WRITE_CPUS, WRITE_SLOTS, synthetic_kwargs
from jobs.bench.steady import SinkRecord

CONFIGURATIONS = ("tuned", "defaults", "from_items")


class RayDataStage:
    """The same synthetic stage, behind Ray Data's batch format (dicts of columns)."""

    def __init__(self, **kwargs):
        # lazy: keeps PIL out of processes that never call this
        from pipelines.stages.synthetic import SyntheticStage

        self.stage = SyntheticStage(**kwargs)

    def __call__(self, batch: dict) -> dict:
        ids = [int(i) for i in batch["id"]]
        keys = [f"{i:09d}" for i in ids]
        if self.stage.emits == "latents":
            out = self.stage({"keys": keys, "samples": [{"index": i} for i in ids]})
            return {"id": np.array(ids), "latents": out["latents"]}
        out = self.stage({"keys": keys, "indices": ids, "latents": batch["latents"]})
        meta = [json.dumps({"key": k, **f}).encode() for k, f in zip(keys, out["fields"])]
        return {"__key__": keys, "png": [f["png"] for f in out["files"]], "json": meta}


def source(images: int, shard: int, configuration: str):
    """The ids to generate: one block per shard on light read tasks (tuned) or made in the driver
    (from_items), or Ray Data's default."""
    # lazy: keeps ray out of processes that never call this
    import ray.data

    if configuration == "defaults":
        return ray.data.range(images)
    if configuration == "from_items":
        return ray.data.from_items([{"id": i} for i in range(images)], override_num_blocks=max(1, images // shard))
    # `range` takes no read resources; read_datasource over the same datasource does.
    from ray.data._internal.datasource.range_datasource import RangeDatasource

    return ray.data.read_datasource(RangeDatasource(n=images, block_format="arrow", column_name="id"),
                                    num_cpus=STAGE_CPUS, override_num_blocks=max(1, images // shard))


def write_options(shard: int, configuration: str) -> dict:
    if configuration == "defaults":
        return {"encoder": None}  # the payload is bytes already, in both configurations
    return {"encoder": None, "min_rows_per_file": shard, "concurrency": WRITE_SLOTS,
            "ray_remote_args": {"num_cpus": WRITE_CPUS}}


def file_events(url: str) -> list[tuple[float, int]]:
    """(mtime, rows) of every file Ray Data wrote."""
    events = []
    for path in glob.glob(os.path.join(url, "*.tar")):
        with tarfile.open(path) as tar:
            rows = sum(1 for m in tar.getmembers() if m.name.endswith(".png"))
        events.append((os.path.getmtime(path), rows))
    return events


def run_ray_data(profile: dict, split: dict, url: str, images: int, args, configuration: str = "tuned") -> dict:
    # lazy: keeps ray out of processes that never call this
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    shard = profile["samples_per_shard"]
    began = time.time()  # the dataset is lazy: its actors start inside write_webdataset, after this
    ds = source(images, shard, configuration)
    for name, s in profile["stages"].items():
        kwargs = synthetic_kwargs(profile, name, args.time_scale, tuple(args.latent_shape))
        ds = ds.map_batches(RayDataStage, fn_constructor_kwargs=kwargs, batch_size=s["batch_size"],
                            concurrency=split[name], num_gpus=1, num_cpus=STAGE_CPUS)
    ds.write_webdataset(url, **write_options(shard, configuration))
    ended = time.time()
    events = file_events(url)
    rows = [n for _, n in events]
    return {
        "configuration": configuration,
        "record": SinkRecord.from_groups(began, events),
        "wall_s": ended - began,  # actor start-up included, as latentmill's
        "files": len(events),
        "rows_per_file": {"min": min(rows, default=0), "max": max(rows, default=0)},
        "example_files": sorted(os.path.basename(p) for p in glob.glob(os.path.join(url, "*.tar")))[:2],
    }
