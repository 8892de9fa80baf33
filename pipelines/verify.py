"""Check a job output: every committed shard readable and consistent, nothing missing or doubled."""

from __future__ import annotations

import io
import tarfile
from collections import Counter

import pyarrow.parquet as pq

from pipelines.errors import OutputError
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.video import check_clips


def verify_output(url: str, storage=None) -> dict:
    layout = OutputLayout(url, storage)
    job = layout.read_job()
    if job is None:
        raise OutputError(f"{url} is not a latentmill output (no latentmill.json)")
    planned = layout.read_plan_table(columns=("key",)).column("key").to_pylist()
    index = layout.read_index()
    markers = layout.committed_markers()
    problems: list[str] = []

    keys: list[str] = []
    failed: list[str] = []
    indexed = {s["name"] for s in index["shards"]}
    for name in sorted(indexed - set(markers)):
        problems.append(f"shard {name} is in index.json but has no commit marker")
    for name in sorted(set(markers) - indexed):
        problems.append(f"shard {name} is committed but not in index.json (an interrupted run; rerun to resume)")
    for name in sorted(indexed & set(markers)):
        shard_keys, shard_failed, shard_problems = _check_shard(layout, name, markers[name])
        keys.extend(shard_keys)
        failed.extend(shard_failed)
        problems.extend(shard_problems)

    counts = Counter(keys)
    duplicates = sorted(k for k, n in counts.items() if n > 1)
    missing = sorted(set(planned) - set(counts) - set(failed))
    unplanned = sorted(set(counts) - set(planned))
    problems += [f"key {k} is not in the plan" for k in unplanned[:10]]
    ok = not problems and not duplicates and not missing and not failed
    return {
        "url": url,
        "job": job.get("name"),
        "planned": len(planned),
        "samples": len(keys),
        "unique_keys": len(counts),
        "duplicates": len(duplicates),
        "missing": len(missing),
        "failed": len(failed),
        "committed_shards": len(markers),
        "planned_shards": job.get("shards"),
        "duplicate_keys": duplicates[:20],
        "missing_keys": missing[:20],
        "failed_keys": sorted(failed)[:20],
        "problems": problems,
        "ok": ok,
    }


def _check_shard(layout: OutputLayout, name: str, marker: dict) -> tuple[list[str], list[str], list[str]]:
    """(keys in the tar, keys recorded failed, problems) of one committed shard."""
    paths = layout.shard_paths(name)
    problems = []
    try:
        data = layout.retrying(f"reading shard {name}", lambda: layout.fs.cat_file(paths["tar"]))
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getnames()
    except (OSError, tarfile.TarError) as exc:
        return [], [], [f"shard {name}: tar unreadable ({exc})"]
    tar_keys = sorted({m.split(".", 1)[0] for m in members})
    if len(data) != marker["tar_bytes"]:
        problems.append(f"shard {name}: tar has {len(data)} bytes, its marker says {marker['tar_bytes']}")
    try:
        with layout.fs.open(paths["manifest"], "rb") as f:
            rows = pq.read_table(f).to_pylist()
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        return tar_keys, [], problems + [f"shard {name}: manifest unreadable ({exc})"]
    ok_keys = sorted(r["key"] for r in rows if r.get("status", "ok") == "ok")
    failed_keys = sorted(r["key"] for r in rows if r.get("status") == "failed")
    problems += [f"shard {name}: {p}" for p in check_clips(data, rows)]  # every mp4 decoded, vs its row
    if ok_keys != tar_keys:
        problems.append(f"shard {name}: manifest lists {len(ok_keys)} samples, tar holds {len(tar_keys)}")
    if marker["samples"] != len(tar_keys) or marker.get("failed", 0) != len(failed_keys):
        problems.append(
            f"shard {name}: marker counts {marker['samples']} samples and {marker.get('failed', 0)} failed, "
            f"files hold {len(tar_keys)} and {len(failed_keys)}"
        )
    return tar_keys, failed_keys, problems
