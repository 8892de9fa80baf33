"""Check a job output: every committed shard readable and consistent, nothing missing or doubled.

Reads only; takes no lease, so it works on a job that is running. With `full`, the sha256 of
every tar and manifest is compared with its commit marker's too.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import Counter

from pipelines.errors import ConfigError, OutputConflict
from pipelines.observe.quality import quality_summary
from pipelines.sinks.integrity import damaged_shards
from pipelines.sinks.layout import MARKER_SUFFIX, SHARD_DIR, OutputLayout
from pipelines.sinks.video import check_clips
from pipelines.tables import table_from_bytes

REPAIR_HINT = "rerun `latentmill run SPEC` on this output to regenerate what is damaged or missing"
FULL_REPAIR_HINT = ("rerun `latentmill run SPEC --check full` on this output: shards {shards} differ from their "
                    "markers in content, not size, which a plain rerun does not check")
FAILED_HINT = "rerun `latentmill run SPEC --retry-failed` to try the failed samples again"


def failed_samples(url: str, storage=None) -> int:
    """Samples recorded as failed in the whole output (from index.json, rewritten by every run):
    `latentmill run` exits 1 when there are any, as verify does."""
    return OutputLayout(url, storage).read_index()["failed"]


def verify_output(url: str, storage=None, full: bool = False, strict: bool = False) -> dict:
    """What `latentmill verify` prints. Inputs a stage rejected (corrupt source images) are counted
    but are bad data, not a failed job; `strict` makes them fail the check too."""
    layout = OutputLayout(url, storage)
    job = layout.read_job()
    if job is None:
        raise OutputConflict(f"{url} is not a latentmill output (no latentmill.json)")
    planned = layout.read_plan_table(columns=("key",)).column("key").to_pylist()
    index = layout.read_index()
    markers, invalid = layout.read_markers()
    problems = [f"shard {name}: its commit marker {SHARD_DIR}/{name}{MARKER_SUFFIX} is not valid: {why}; the shard "
                "counts as not committed" for name, why in invalid.items()]
    damaged: set[str] = set(invalid)

    keys: list[str] = []
    failed: list[str] = []
    rejected: list[str] = []
    indexed = {s["name"]: s for s in index["shards"]}
    for name in sorted(set(indexed) - set(markers)):
        problems.append(f"shard {name} is in index.json but has no commit marker")
    # The marker is the commit; index.json is a listing the driver rewrites after commits. A shard
    # committed just before the driver died is whole but unlisted: checked like any other, and the
    # output is incomplete (readers go by the index) until a rerun rewrites the index.
    unindexed = sorted(set(markers) - set(indexed))
    for name in sorted(markers):
        paths = layout.committed_paths(name, markers[name])
        if name in indexed and indexed[name]["tar"] != f"shards/{paths['tar'].rsplit('/', 1)[-1]}":
            problems.append(f"shard {name}: index.json names {indexed[name]['tar']}, its marker another tar")
        shard_keys, shard_failed, shard_rejected, shard_problems = _check_shard(layout, name, markers[name], full)
        keys.extend(shard_keys)
        failed.extend(shard_failed)
        rejected.extend(shard_rejected)
        problems.extend(shard_problems)
        if shard_problems:
            damaged.add(name)

    counts = Counter(keys)
    duplicates = sorted(k for k, n in counts.items() if n > 1)
    missing = sorted(set(planned) - set(counts) - set(failed) - set(rejected))
    unplanned = sorted(set(counts) - set(planned))
    problems += [f"key {k} is not in the plan" for k in unplanned[:10]]
    ok = not (problems or unindexed or duplicates or missing or failed or (strict and rejected))
    hints = _repair_hints(layout, markers, damaged, bool(problems or unindexed or duplicates or missing)) + (
        [FAILED_HINT] if failed else [])
    return {
        "url": url,
        "job": job.get("name"),
        "check": "full" if full else "size",
        "planned": len(planned),
        "samples": len(keys),
        "unique_keys": len(counts),
        "duplicates": len(duplicates),
        "missing": len(missing),
        "failed": len(failed),
        "rejected": len(rejected),
        "committed_shards": len(markers),
        "planned_shards": job.get("shards"),
        "duplicate_keys": duplicates[:20],
        "missing_keys": missing[:20],
        "failed_keys": sorted(failed)[:20],
        "rejected_keys": sorted(rejected)[:20],
        "problems": problems,
        "unindexed_shards": unindexed,
        "repair": hints,
        "ok": ok,
    }


def _repair_hints(layout: OutputLayout, markers: dict, damaged: set[str], incomplete: bool) -> list[str]:
    """The command that repairs what was found: a plain rerun regenerates the shards whose files
    are missing or of another size than their markers say (the check every run makes); changed
    bytes of the same size only a run with `--check full` finds."""
    plain = set(damaged_shards(layout, {n: m for n, m in markers.items() if n in damaged}))
    content_only = sorted((damaged & set(markers)) - plain)  # an invalid marker: a plain rerun regenerates it
    if content_only:
        return [FULL_REPAIR_HINT.format(shards=", ".join(content_only))]
    return [REPAIR_HINT] if incomplete else []


def _check_shard(layout: OutputLayout, name: str, marker: dict, full: bool) -> tuple[list, list, list, list]:
    """(keys in the tar, keys recorded failed, keys of rejected inputs, problems) of one committed shard."""
    paths = layout.committed_paths(name, marker)
    problems = []
    try:
        data = layout.retrying(f"reading shard {name}", lambda: layout.fs.cat_file(paths["tar"]))
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getnames()
    except (OSError, tarfile.TarError) as exc:
        return [], [], [], [f"shard {name}: tar unreadable ({exc})"]
    tar_keys = sorted({m.split(".", 1)[0] for m in members})
    if len(data) != marker["tar_bytes"]:
        problems.append(f"shard {name}: tar has {len(data)} bytes, its marker says {marker['tar_bytes']}")
    elif full and hashlib.sha256(data).hexdigest() != marker["tar_sha256"]:
        problems.append(f"shard {name}: tar sha256 differs from its marker's (changed bytes)")
    try:
        manifest = layout.retrying(f"reading manifest {name}", lambda: layout.fs.cat_file(paths["manifest"]))
        rows = table_from_bytes(manifest).to_pylist()
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        return tar_keys, [], [], problems + [f"shard {name}: manifest unreadable ({type(exc).__name__}: {exc})"]
    if full and marker.get("manifest_sha256") and hashlib.sha256(manifest).hexdigest() != marker["manifest_sha256"]:
        problems.append(f"shard {name}: manifest sha256 differs from its marker's (changed bytes)")
    ok_keys = sorted(r["key"] for r in rows if r.get("status", "ok") == "ok")
    failed_keys = sorted(r["key"] for r in rows if r.get("status") == "failed")
    rejected_keys = sorted(r["key"] for r in rows if r.get("status") == "rejected")
    problems += [f"shard {name}: {p}" for p in check_clips(data, rows)]  # every mp4 decoded, vs its row
    if ok_keys != tar_keys:
        problems.append(f"shard {name}: manifest lists {len(ok_keys)} samples, tar holds {len(tar_keys)}")
    if marker["samples"] != len(tar_keys) or marker.get("failed", 0) != len(failed_keys):
        problems.append(
            f"shard {name}: marker counts {marker['samples']} samples and {marker.get('failed', 0)} failed, "
            f"files hold {len(tar_keys)} and {len(failed_keys)}"
        )
    return tar_keys, failed_keys, rejected_keys, problems


def verify_quality(url: str, storage=None) -> dict:
    """What `latentmill verify --quality` adds: the quality monitor's summary (pipelines/observe/quality.py)
    with `ok` false when a shard is below the spec's thresholds. A job without a monitor has nothing
    to check: a usage error (exit 2), not a pass."""
    layout = OutputLayout(url, storage)
    job = layout.read_job()
    if job is None:
        raise OutputConflict(f"{url} is not a latentmill output (no latentmill.json)")
    summary = quality_summary(layout, job)
    if summary is None:
        raise ConfigError("", "", detail=(
            f"--quality: the job at {url} ran without a quality monitor, so there are no quality figures to check; "
            "add quality_monitor: {fraction: 0.25, min_psnr: ..., min_ssim: ...} to its spec (generate or redecode, "
            "with a decoder other than sdxl-vae)"))
    return {**summary, "ok": not summary["flagged"]}
