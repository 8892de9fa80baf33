"""`latentmill bench browse`: how fast the browser page is on a large output, cold and warm.

It synthesises an output of N images (default 100,000, 32 per shard) with the real shard writer
and small 64x64 PNGs instead of diffusion (kept in --workdir for reuse), optionally copies it to
the local S3 server (moto, as the tests use), then starts `latentmill browse` on it in a fresh
process and times over HTTP what a user waits for: start-up (the manifests loaded), the first grid
page with its 100 thumbnails fetched 6 at a time as a browser does, and one sample page with its
image. "cold" is the first request after start-up (thumbnails made from range reads), "warm" the
same again (thumbnails from the in-memory cache).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import fsspec
import numpy as np

from infra.local_s3 import LocalS3

CONNECTIONS = 6  # what a browser opens to one host
IMAGES = 64  # distinct synthetic images, cycled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentmill bench browse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--samples-per-shard", type=int, default=32)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "latentmill-bench-browse"))
    parser.add_argument("--where", choices=("local", "s3", "both"), default="both")
    args = parser.parse_args(argv)
    url = synthesise(os.path.join(args.workdir, f"out-{args.samples}"), args.samples, args.samples_per_shard)
    rows = []
    if args.where in ("local", "both"):
        rows.append(("local disk", args.samples, *measure(url, [], key_of(args.samples))))
    if args.where in ("s3", "both"):
        server = LocalS3(buckets=("latentmill",))
        try:
            s3_url, flags = copy_to_s3(server, url)
            rows.append(("local S3 (moto)", args.samples, *measure(s3_url, flags, key_of(args.samples), server_env(server))))
        finally:
            server.close()
    print_table(rows)
    return 0


def synthesise(url: str, samples: int, per_shard: int) -> str:
    """A generate output of `samples` small PNGs written by the real writer (reused when complete)."""
    # lazy: keeps pyarrow, PIL out of processes that never call this
    from jobs.local import pipeline_for
    from jobs.spec import parse_spec
    from pipelines.sinks.layout import OutputLayout
    from pipelines.sinks.shard_index import ShardIndex
    from pipelines.sinks.webdataset_writer import write_shard

    spec = parse_spec(json.dumps(bench_spec(url, samples, per_shard)), source="bench-browse.yaml")
    pipeline = pipeline_for(spec)
    plan, layout = pipeline.plan, OutputLayout(url)
    done = layout.committed_markers() if layout.read_job() else {}
    record = {"format_version": 1, "name": pipeline.name, "identity": {**pipeline.identity, "plan_sha256": plan.digest()},
              "planned": len(plan), "shards": plan.num_shards, "samples_per_shard": plan.samples_per_shard,
              "spec": pipeline.spec}
    layout.claim(record, plan, "resume")
    pictures = synthetic_pngs()
    started = time.perf_counter()
    for i in range(plan.num_shards):
        shard = plan.shard(i)
        if shard.name in done:
            continue
        keys = [s.key for s in shard.samples]
        batch = {"keys": keys, "files": [{"png": pictures[s.index % IMAGES]} for s in shard.samples],
                 "fields": [{"height": 64, "width": 64}] * len(keys), "timings": {"decode": 0.0}}
        done[shard.name] = write_shard(url, None, shard.name, [s.as_dict() for s in shard.samples],
                                       {"job": pipeline.name}, [], None, (), batch)
        if i % 500 == 499:
            print(f"synthesised {i + 1}/{plan.num_shards} shards ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    ShardIndex.from_markers(plan.num_shards, done).write(layout)
    return url


def bench_spec(url: str, samples: int, per_shard: int) -> dict:
    return {"name": "bench-browse", "kind": "generate", "model": {"family": "sdxl", "reference": "tiny"},
            "sampler": {"steps": 2, "height": 64, "width": 64},
            "prompts": {"inline": [f"synthetic prompt {i}" for i in range(100)], "images_per_prompt": 10},
            "num_images": samples, "seed": 0, "decoder": "sdxl-vae",
            "output": {"url": url, "image_format": "png", "samples_per_shard": per_shard}}


def synthetic_pngs() -> list[bytes]:
    """Smooth colour pictures (PNG compresses them as it would a photo, not as a flat colour)."""
    # lazy: keeps PIL out of processes that never call this
    from PIL import Image

    y, x = np.mgrid[0:64, 0:64]
    pictures = []
    for i in range(IMAGES):
        pixels = np.stack([(40 * i + 90 * np.sin(x / (3 + i % 5) + c) + 60 * np.cos(y / (4 + c))) % 256
                           for c in range(3)], -1).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        pictures.append(buffer.getvalue())
    return pictures


def copy_to_s3(server, url: str) -> tuple[str, list[str]]:
    s3 = fsspec.filesystem("s3", key=server.key, secret=server.secret,
                           client_kwargs={"endpoint_url": server.endpoint, "region_name": "us-east-1"})
    started = time.perf_counter()
    s3.put(url, "latentmill/bench-browse", recursive=True)
    print(f"copied to S3 in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    flags = ["--endpoint-url", server.endpoint, "--region", "us-east-1",
             "--access-key-id-env", "BENCH_S3_KEY", "--secret-access-key-env", "BENCH_S3_SECRET"]
    return "s3://latentmill/bench-browse", flags


def server_env(server) -> dict:
    return {"BENCH_S3_KEY": server.key, "BENCH_S3_SECRET": server.secret}


def key_of(samples: int) -> str:
    """A sample in the middle of the output (sample keys are 9-digit indices)."""
    return f"{samples // 2 + 321:09d}"


def measure(url: str, flags: list[str], key: str, env: dict | None = None) -> tuple[float, ...]:
    """Start-up, first grid page cold/warm, one sample page cold/warm (seconds), against a fresh server."""
    command = [sys.executable, "-m", "jobs.cli", "browse", url, "--port", "0", *flags]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    try:
        line = process.stdout.readline()
        startup = time.perf_counter() - started
        base = re.search(r"(http://\S+/)", line).group(1)
        grid = [timed(lambda: page_with_images(base, "grid.html")) for _ in range(2)]
        sample = [timed(lambda: page_with_images(base, f"sample-{key}.html")) for _ in range(2)]
    finally:
        process.terminate()
        process.wait(timeout=30)
    return (startup, *grid, *sample)


def page_with_images(base: str, page: str) -> int:
    """Fetch a page, then every image it shows, CONNECTIONS at a time; returns how many images."""
    html = fetch(base + page).decode()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', html)
    with ThreadPoolExecutor(CONNECTIONS) as pool:
        list(pool.map(lambda src: fetch(base + src), sources))
    return len(sources)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as answer:
        return answer.read()


def timed(operation) -> float:
    started = time.perf_counter()
    operation()
    return time.perf_counter() - started


def print_table(rows: list[tuple]) -> None:
    print("| output | samples | start-up s (until the URL is printed) | first grid page + 100 thumbnails s, cold | warm | "
          "one sample page + image s, cold | warm |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for where, samples, *times in rows:
        print(f"| {where} | {samples:,} | " + " | ".join(f"{t:.2f}" for t in times) + " |")
