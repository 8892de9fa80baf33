"""`latentmill bench sources`: driver memory and time to plan a large image list.

Each row writes a list of N image paths with captions (Parquet or JSONL, kept in --workdir for
reuse), then plans it in a fresh Python process the way a dry run does: plan, digest, every
plan.parquet row (in 8,192-row chunks) and the last shard. It reports the process's peak resident
memory (VmHWM) after imports and after planning, and the planning time. `--imports cli`
first imports what `latentmill run` imports (Ray, torch), to show the driver as a user runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

WORKER = """
import json, resource, sys, time
for module in {modules!r}:
    __import__(module)
from pipelines.sources.images import plan_images

def peak_mb():
    # VmHWM: this process's own peak RSS. ru_maxrss can carry over the parent's peak across fork/exec.
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

baseline = peak_mb()
started = time.perf_counter()
plan = plan_images(sys.argv[1], samples_per_shard=256)
digest = plan.digest()
rows = sum(plan.table(start, start + 8192).num_rows for start in range(0, len(plan), 8192))
last = plan.shard(plan.num_shards - 1)
print(json.dumps({{"samples": len(plan), "rows": rows, "last_key": last.samples[-1].key,
                   "seconds": time.perf_counter() - started, "imports_mb": baseline, "peak_mb": peak_mb()}}))
"""
IMPORTS = {"sources": [], "cli": ["jobs.cli", "jobs.local", "jobs.spec"]}


def write_list(directory: str, count: int, fmt: str) -> str:
    """`count` rows: image (relative path), caption, aesthetic (kept as metadata)."""
    # lazy: keeps pyarrow out of processes that never call this
    import pyarrow as pa
    import pyarrow.compute as pc

    path = os.path.join(directory, f"images-{count}.{fmt}")
    if os.path.exists(path):
        return path
    numbers = pc.cast(pa.array(range(count), pa.int64()), pa.string())
    table = pa.table({
        "image": pc.binary_join_element_wise("images/", pc.utf8_lpad(numbers, 8, "0"), ".jpg", ""),
        "caption": pc.binary_join_element_wise("a photograph, number ", numbers, ""),
        "aesthetic": pa.array((i % 100) / 10 for i in range(count)),
    })
    if fmt == "parquet":
        # lazy: keeps pyarrow out of processes that never call this
        import pyarrow.parquet as pq

        pq.write_table(table, path + ".tmp")
    else:
        with open(path + ".tmp", "w") as f:
            for batch in table.to_batches(max_chunksize=65536):
                f.writelines(json.dumps(row) + "\n" for row in batch.to_pylist())
    os.replace(path + ".tmp", path)
    return path


def measure(path: str, imports: str = "sources") -> dict:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = WORKER.format(modules=IMPORTS[imports])
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, env=env, cwd=repo)
    if result.returncode != 0:
        raise RuntimeError(f"planning {path} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="latentmill bench sources", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000000", help="comma-separated list lengths")
    p.add_argument("--formats", default="parquet,jsonl")
    p.add_argument("--imports", choices=sorted(IMPORTS), default="sources",
                   help="sources: only the source modules; cli: also what `latentmill run` imports (Ray, torch)")
    p.add_argument("--workdir", default=None, help="where the lists are written (default: a temporary directory)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="latentmill-bench-sources-")
    os.makedirs(workdir, exist_ok=True)
    rows = []
    for count in (int(s) for s in args.sizes.split(",")):
        for fmt in args.formats.split(","):
            started = time.perf_counter()
            path = write_list(workdir, count, fmt)
            row = {"format": fmt, "entries": count, "imports": args.imports,
                   "list_mb": round(os.path.getsize(path) / 2**20, 1), "write_s": round(time.perf_counter() - started, 1)}
            row.update(measure(path, args.imports))
            row["planning_mb"] = round(row["peak_mb"] - row["imports_mb"], 1)
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        print("| list | entries | file MB | imports | peak RSS after imports MB | peak RSS after planning MB | planning adds MB | plan s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['format']} | {r['entries']:,} | {r['list_mb']} | {r['imports']} | {r['imports_mb']:.0f} | "
                  f"{r['peak_mb']:.0f} | {r['planning_mb']:.0f} | {r['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
