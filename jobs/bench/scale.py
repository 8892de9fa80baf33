"""`latentmill bench scale`: 10K and 100K images end to end, to local disk and to a local S3 server.

It records wall time, images/s, and the peak resident memory of the driver and of the Ray worker
processes, sampled through each run, so that memory growth with job size shows. The model is the
built-in tiny SDXL at 32x32 with one step and no guidance: the pipeline, not the model, is what
this measures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import psutil
import yaml

from infra.local_s3 import LocalS3
from jobs.bench.sampling import PeriodicSampler

SCALE_SPEC = {
    "name": "bench-scale",
    "model": {"reference": "tiny"},
    "sampler": {"scheduler": "euler", "steps": 1, "guidance_scale": 0.0, "height": 32, "width": 32},
    "prompts": {"inline": ["a red fox", "a lighthouse at dusk", "a bowl of ramen", "an isometric city"]},
    "output": {"url": "", "samples_per_shard": 1000},
    "stages": {
        "denoise": {"num_gpus": 0, "num_cpus": 1, "batch_size": 125},
        "decode": {"num_gpus": 0, "num_cpus": 0.5, "batch_size": 125},
        "write": {"num_cpus": 0.25, "concurrency": 2},
    },
}


class MemorySampler(PeriodicSampler):
    """Peak memory of this process (the driver) and of Ray's worker processes, sampled in a thread.

    RSS counts the object-store pages a worker has touched (shared memory, bounded by the store),
    so it creeps up as a run goes on; USS counts memory private to the process, where a leak shows.
    """

    def __init__(self, exclude_pids: set[int], interval_s: float = 1.0):
        super().__init__(interval_s)
        self.exclude, self.me = exclude_pids, psutil.Process()
        self.peaks = {"driver_rss": 0, "driver_uss": 0, "workers_rss": 0, "workers_uss": 0, "largest_worker_uss": 0}

    def sample(self) -> None:
        me = self.me
        driver = me.memory_full_info()
        workers = []
        for child in me.children(recursive=True):
            try:
                if child.pid not in self.exclude and child.cmdline()[:1] and child.cmdline()[0].startswith("ray::"):
                    workers.append(child.memory_full_info())
            except psutil.Error:
                continue  # a worker that ended between listing and reading
        now = {
            "driver_rss": driver.rss,
            "driver_uss": driver.uss,
            "workers_rss": sum(w.rss for w in workers),
            "workers_uss": sum(w.uss for w in workers),
            "largest_worker_uss": max((w.uss for w in workers), default=0),
        }
        for name, value in now.items():
            self.peaks[name] = max(self.peaks[name], value)


def run_one(target: str, images: int, url: str, storage: dict | None, exclude: set[int]) -> dict:
    # lazy: keeps pyarrow, PIL, numpy out of processes that never call this
    from jobs.local import run_job
    from jobs.spec import parse_spec
    from pipelines.verify import verify_output

    data = json.loads(json.dumps(SCALE_SPEC))
    data["num_images"] = images
    data["output"]["url"] = url
    if storage:
        data["output"]["storage"] = storage
    spec = parse_spec(yaml.safe_dump(data), source="bench-scale")
    with MemorySampler(exclude) as memory:
        started = time.perf_counter()
        report = run_job(spec, progress=False)
        wall = time.perf_counter() - started
    result = verify_output(spec.output.url, spec.output.storage)
    mb = 1 / 2**20
    return {
        "target": target,
        "images": images,
        "wall_s": round(wall, 1),
        "images_per_s": round(report["generated"] / wall, 1),
        "unique_keys": result["unique_keys"],
        "verified": result["ok"],
        **{f"{name}_peak_mb": round(value * mb) for name, value in memory.peaks.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentmill bench scale", description=__doc__)
    parser.add_argument("--images", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--targets", nargs="+", choices=["local", "s3"], default=["local", "s3"])
    parser.add_argument("--warmup", type=int, default=2000,
                        help="images of one unreported run per target first, so one-time growth (imports, "
                             "worker start) is not charged to the first measured size")
    parser.add_argument("--workdir", help="where local outputs go (default: a temporary folder, removed after)")
    parser.add_argument("--json", action="store_true", help="one JSON object per run instead of the table")
    args = parser.parse_args(argv)

    # lazy: keeps pyarrow, PIL, numpy out of processes that never call this
    from jobs.local import connect_ray

    workdir = args.workdir or tempfile.mkdtemp(prefix="latentmill-bench-scale-")
    server = None
    exclude: set[int] = set()
    if "s3" in args.targets:
        server = LocalS3(buckets=("bench",))
        os.environ["LATENTMILL_BENCH_S3_KEY"], os.environ["LATENTMILL_BENCH_S3_SECRET"] = server.key, server.secret
        exclude.add(server.process.pid)
    connect_ray()  # after the S3 keys are in the environment, which local workers inherit
    rows = []
    try:
        for target in args.targets:
            sizes = ([(args.warmup, True)] if args.warmup else []) + [(n, False) for n in args.images]
            for images, warmup in sizes:
                run_id = f"{target}-{images}-{int(time.time())}"
                if target == "local":
                    url, storage = os.path.join(workdir, run_id), None
                else:
                    url = f"s3://bench/{run_id}"
                    storage = {"endpoint_url": server.endpoint, "access_key_id_env": "LATENTMILL_BENCH_S3_KEY",
                               "secret_access_key_env": "LATENTMILL_BENCH_S3_SECRET"}
                row = run_one(target, images, url, storage, exclude)
                row["warmup"] = warmup
                rows.append(row)
                print(json.dumps(row) if args.json else f"done: {row}", flush=True)
                if target == "local":
                    shutil.rmtree(url, ignore_errors=True)
    finally:
        if server:
            server.close()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if not args.json:
        print(format_table([r for r in rows if not r["warmup"]]))
    return 0 if all(r["verified"] and r["unique_keys"] == r["images"] for r in rows) else 1


def format_table(rows: list[dict]) -> str:
    columns = ["driver_rss", "driver_uss", "workers_rss", "workers_uss", "largest_worker_uss"]
    lines = [
        "| target | images | wall s | images/s | verified unique keys | " + " | ".join(f"{c} peak MB" for c in columns) + " |",
        "|" + "---|" * (5 + len(columns)),
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['images']:,} | {r['wall_s']} | {r['images_per_s']} | {r['unique_keys']:,} | "
            + " | ".join(str(r[f"{c}_peak_mb"]) for c in columns) + " |"
        )
    by_target: dict[str, list[dict]] = {}
    for r in rows:
        by_target.setdefault(r["target"], []).append(r)
    for target, runs in by_target.items():
        small, large = min(runs, key=lambda r: r["images"]), max(runs, key=lambda r: r["images"])
        if small is not large:
            ratios = ", ".join(f"{c} {large[f'{c}_peak_mb'] / small[f'{c}_peak_mb']:.3f}x" for c in columns)
            lines.append(f"\n{target}: peak at {large['images']:,} vs {small['images']:,} images: {ratios}")
    return "\n".join(lines)
