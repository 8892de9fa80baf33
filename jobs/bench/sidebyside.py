"""`python -m jobs.bench.sidebyside`: latentmill vs the Ray Data pipeline a user would write with the
same real stage classes (tiny SDXL denoise and decode, `bench pipeline`'s built-in spec) and the same
resources, 256 and 1,024 images, whole-process wall time, `--repeats` runs each.

Each run is a fresh process, timed from outside (Python start-up, imports, Ray start, model loading
and the run itself, as a user waits for them):
  latentmill  `latentmill run SPEC --set num_images=N`;
  ray_data    the same spec's plan as `ray.data.from_items` (one block per planned shard), the same
              stage classes and kwargs as `map_batches` callable-class actor pools (each stage's
              `concurrency`, `num_cpus`, `num_gpus` and `batch_size`), then `write_webdataset` with
              `min_rows_per_file` = the shard size and the spec's write slots and CPUs.
Prints median (min-max) wall seconds and images written.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np

from jobs.bench.pipeline import DEFAULT_SPEC
from jobs.bench.steady import summary
from pipelines.pipeline import stage_class


class DenoiseColumns:
    """A latentmill stage behind Ray Data's batch format: columns in, columns out."""

    def __init__(self, cls: str, kwargs: dict):
        self.stage = stage_class(cls)(**kwargs)

    def __call__(self, batch: dict) -> dict:
        samples = [{"key": k, "prompt": p, "seed": int(s)} for k, p, s in zip(batch["key"], batch["prompt"], batch["seed"])]
        out = self.stage({"samples": samples})
        return {"key": out["keys"], "latents": out["latents"]}


class DecodeColumns(DenoiseColumns):
    def __call__(self, batch: dict) -> dict:
        out = self.stage({"keys": list(batch["key"]), "latents": np.asarray(batch["latents"])})
        meta = [json.dumps({"key": k, **f}).encode() for k, f in zip(out["keys"], out["fields"])]
        return {"__key__": out["keys"], "png": [f["png"] for f in out["files"]], "json": meta}


def run_ray_data(spec_path: str, images: int, url: str) -> None:
    # lazy: keeps ray, pyarrow out of processes that never call this
    import ray
    import ray.data

    from jobs.kinds import kind_of
    from jobs.spec import load_spec

    spec = load_spec(spec_path, [f"num_images={images}", f"output.url={url}"])
    kind = kind_of(spec)
    plan = kind.plan(spec)
    pipeline = kind.pipeline(spec, plan)
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = [{"key": s.key, "prompt": s.prompt, "seed": s.seed} for s in plan.samples()]
    ds = ray.data.from_items(rows, override_num_blocks=plan.num_shards)
    for stage, adapter in zip(pipeline.stages, (DenoiseColumns, DecodeColumns)):
        r = stage.resources
        ds = ds.map_batches(adapter, fn_constructor_args=(stage.cls, stage.kwargs), batch_size=r.batch_size,
                            concurrency=r.max_actors, num_cpus=r.num_cpus, num_gpus=r.gpus_per_actor(has_gpus))
    ds.write_webdataset(url, encoder=None, min_rows_per_file=spec.output.samples_per_shard,
                        concurrency=pipeline.write.concurrency, ray_remote_args={"num_cpus": pipeline.write.num_cpus})


def images_written(url: str) -> int:
    """PNG members in every tar under the output (latentmill's shards/, Ray Data's files)."""
    count = 0
    for path in glob.glob(os.path.join(url, "**", "*.tar"), recursive=True):
        with tarfile.open(path) as tar:
            count += sum(1 for m in tar.getmembers() if m.name.endswith(".png"))
    return count


def timed_run(system: str, spec_path: str, images: int, url: str) -> dict:
    if system == "latentmill":
        command = [sys.executable, "-m", "jobs.cli", "run", spec_path, "--quiet", "--set", f"num_images={images}",
                   "--set", f"output.url={url}"]
    else:
        command = [sys.executable, "-m", "jobs.bench.sidebyside", "--child", spec_path, "--images", str(images),
                   "--out", url]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{system} at {images} images failed:\n{done.stderr[-3000:]}")
    return {"wall_s": wall, "images": images_written(url)}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m jobs.bench.sidebyside", description=__doc__.splitlines()[0])
    p.add_argument("--images", default="256,1024", help="image counts, comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--spec", help="job spec (default: bench pipeline's built-in tiny SDXL spec)")
    p.add_argument("--workdir", help="where outputs go while a run lasts (default: the temp folder)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    if args.child:
        run_ray_data(args.child, int(args.images), args.out)
        return 0
    if args.repeats < 1:
        print(f"error: --repeats must be at least 1, got {args.repeats}", file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="latentmill-sidebyside-", dir=args.workdir)
    spec_path = args.spec or os.path.join(workdir, "spec.yaml")
    if not args.spec:
        with open(spec_path, "w") as f:
            f.write(DEFAULT_SPEC)
    lines = ["| images | system | runs | wall s median (min-max) | images written |", "|---|---|---|---|---|"]
    try:
        for images in [int(n) for n in args.images.split(",")]:
            runs: dict[str, list] = {"latentmill": [], "ray_data": []}
            for repeat in range(args.repeats):  # interleaved, so a change of load falls on both
                for system, done in runs.items():
                    load_before = os.getloadavg()[0]
                    done.append(timed_run(system, spec_path, images, os.path.join(workdir, f"{system}-{images}-{repeat}")))
                    # each run as it ends, with the 1-minute load around it: a cut-off benchmark keeps what it measured
                    print(f"{images} images, {system} run {repeat + 1}: {done[-1]['wall_s']:.1f} s, "
                          f"{done[-1]['images']} images; load {load_before:.2f} -> {os.getloadavg()[0]:.2f}",
                          file=sys.stderr, flush=True)
            for system, done in runs.items():
                wall = summary([r["wall_s"] for r in done])
                lines.append(f"| {images} | {system} | {len(done)} | {wall['median']:.1f} ({wall['min']:.1f}-{wall['max']:.1f}) "
                             f"| {', '.join(str(r['images']) for r in done)} |")
    finally:
        subprocess.run(["rm", "-rf", workdir], check=False)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
