"""The Ray Data peer of `latentmill bench scheduler`: the same synthetic stages as Ray Data
`map_batches` actor pools on the same GPUs, then `write_webdataset`, as a Ray user would write it."""

from __future__ import annotations

import glob
import json
import os
import tarfile
import time

from jobs.bench.common import (
    STAGE_CPUS,
    WRITE_CPUS,
    WRITE_SLOTS,
    steady_rate,
    synthetic_kwargs,
)


class RayDataStage:
    """The same synthetic stage, behind Ray Data's batch format (dicts of columns)."""

    def __init__(self, **kwargs):
        from pipelines.stages.synthetic import SyntheticStage

        self.stage = SyntheticStage(**kwargs)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        ids = [int(i) for i in batch["id"]]
        keys = [f"{i:09d}" for i in ids]
        if self.stage.emits == "latents":
            out = self.stage({"keys": keys, "samples": [{"index": i} for i in ids]})
            return {"id": np.array(ids), "latents": out["latents"]}
        out = self.stage({"keys": keys, "indices": ids, "latents": batch["latents"]})
        meta = [json.dumps({"key": k, **f}).encode() for k, f in zip(keys, out["fields"])]
        return {"__key__": keys, "png": [f["png"] for f in out["files"]], "json": meta}


def run_ray_data(profile: dict, split: dict, url: str, images: int, args) -> dict:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # One block per first-stage batch: Ray Data runs one task per block on an actor, so the default
    # (a few blocks per CPU: 4 on 2 cores) would keep only 4 actors busy whatever the GPU count.
    first_batch = next(iter(profile["stages"].values()))["batch_size"]
    ds = ray.data.range(images, override_num_blocks=max(1, images // first_batch))
    for name, s in profile["stages"].items():
        kwargs = synthetic_kwargs(profile, name, args.time_scale, tuple(args.latent_shape))
        ds = ds.map_batches(RayDataStage, fn_constructor_kwargs=kwargs, batch_size=s["batch_size"],
                            concurrency=split[name], num_gpus=1, num_cpus=STAGE_CPUS)
    started = time.perf_counter()
    # Writes get what latentmill's get (slots and CPUs): by default each asks for a whole CPU,
    # which on 2 cores would make Ray Data's writes, not its GPU stages, set its pace.
    ds.write_webdataset(url, encoder=None, ray_remote_args={"num_cpus": WRITE_CPUS},  # PNG/JSON already encoded
                        concurrency=WRITE_SLOTS)
    wall = time.perf_counter() - started
    events = []
    for path in glob.glob(os.path.join(url, "*.tar")):
        with tarfile.open(path) as tar:
            rows = sum(1 for m in tar.getmembers() if m.name.endswith(".png"))
        events.append((os.path.getmtime(path), rows))
    rows = [n for _, n in events]
    return {
        "images": sum(rows),
        "wall_s": wall,
        "files": len(events),
        "rows_per_file": {"min": min(rows, default=0), "max": max(rows, default=0)},
        "example_files": sorted(os.path.basename(p) for p in glob.glob(os.path.join(url, "*.tar")))[:2],
        "steady_items_per_s": steady_rate(events),
        "run_items_per_s": sum(rows) / wall,  # actor start-up included (Ray Data starts them inside)
    }
