"""Check a job output: every committed shard readable and consistent, nothing missing or doubled."""

from __future__ import annotations

import io
import tarfile
from collections import Counter

import pyarrow.parquet as pq

from pipelines.errors import OutputError
from pipelines.sinks.layout import OutputLayout


def verify_output(url: str, storage_options: dict | None = None) -> dict:
    layout = OutputLayout(url, storage_options)
    job = layout.read_job()
    if job is None:
        raise OutputError(f"{url} is not a latentmill output (no latentmill.json)")
    planned = layout.read_planned_keys()
    index = layout.read_index()
    markers = layout.committed_markers()
    problems: list[str] = []

    keys: list[str] = []
    indexed = {s["name"] for s in index["shards"]}
    for name in sorted(indexed - set(markers)):
        problems.append(f"shard {name} is in index.json but has no commit marker")
    for name in sorted(set(markers) - indexed):
        problems.append(f"shard {name} is committed but not in index.json (an interrupted run; rerun to resume)")
    for name in sorted(indexed & set(markers)):
        shard_keys, shard_problems = _check_shard(layout, name, markers[name])
        keys.extend(shard_keys)
        problems.extend(shard_problems)

    counts = Counter(keys)
    duplicates = sorted(k for k, n in counts.items() if n > 1)
    missing = sorted(set(planned) - set(counts))
    unplanned = sorted(set(counts) - set(planned))
    problems += [f"key {k} is not in the plan" for k in unplanned[:10]]
    ok = not problems and not duplicates and not missing
    return {
        "url": url,
        "job": job.get("name"),
        "planned": len(planned),
        "samples": len(keys),
        "unique_keys": len(counts),
        "duplicates": len(duplicates),
        "missing": len(missing),
        "committed_shards": len(markers),
        "planned_shards": job.get("shards"),
        "duplicate_keys": duplicates[:20],
        "missing_keys": missing[:20],
        "problems": problems,
        "ok": ok,
    }


def _check_shard(layout: OutputLayout, name: str, marker: dict) -> tuple[list[str], list[str]]:
    paths = layout.shard_paths(name)
    problems = []
    try:
        with layout.fs.open(paths["tar"], "rb") as f:
            data = f.read()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getnames()
    except (OSError, tarfile.TarError) as exc:
        return [], [f"shard {name}: tar unreadable ({exc})"]
    tar_keys = sorted({m.split(".", 1)[0] for m in members})
    if len(data) != marker["tar_bytes"]:
        problems.append(f"shard {name}: tar has {len(data)} bytes, its marker says {marker['tar_bytes']}")
    try:
        with layout.fs.open(paths["manifest"], "rb") as f:
            manifest_keys = pq.read_table(f, columns=["key"]).column("key").to_pylist()
    except (OSError, Exception) as exc:  # pyarrow raises its own error types for corrupt files
        return tar_keys, problems + [f"shard {name}: manifest unreadable ({exc})"]
    if sorted(manifest_keys) != tar_keys:
        problems.append(f"shard {name}: manifest lists {len(manifest_keys)} keys, tar holds {len(tar_keys)}")
    if marker["samples"] != len(tar_keys):
        problems.append(f"shard {name}: marker counts {marker['samples']} samples, tar holds {len(tar_keys)}")
    return tar_keys, problems
