"""Write one shard: a webdataset tar streamed to storage, its Parquet manifest, then its marker.

Every tar member has a fixed mtime and owner, so the same samples always give the same bytes.
Samples that failed after their retries are not in the tar; they are rows of the manifest with
status "failed" and their error, and the marker counts them. Samples whose input a stage rejected
(a corrupt source image, say) are rows with status "rejected" and the reason.

A committed shard is never rewritten in place: a repair writes revision N+1 under new names
(`00000.r1.tar`, `00000.r1.parquet`) and only its new marker makes them the shard; until then the
old files stay whole, and afterwards the driver removes them as debris. Each file appears complete
or not at all (storage.streaming_writer), so a write killed midway, or retried by Ray, never
leaves a marker pointing at a torn file.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from dataclasses import dataclass

import pyarrow as pa

from pipelines import faults as fault_injection
from pipelines.config import StorageConfig
from pipelines.sinks.layout import OutputLayout, shard_files
from pipelines.sinks.storage import json_safe, read_table, streaming_writer, write_atomic, write_json
from pipelines.tables import table_to_bytes


class _HashingWriter:
    """Pass-through file wrapper that counts and hashes what goes to storage."""

    def __init__(self, f):
        self.f, self.sha256, self.size = f, hashlib.sha256(), 0

    def write(self, data):
        self.sha256.update(data)
        self.size += len(data)
        return self.f.write(data)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def sample_members(sample: dict, files: dict[str, bytes], fields: dict, sample_metadata: dict) -> list[tuple[str, bytes]]:
    """A sample's tar members: its primary file, its text (prompt or caption), its metadata, the rest."""
    key = sample["key"]
    primary, *rest = files.items()
    members = [(f"{key}.{primary[0]}", primary[1])]
    text = sample.get("prompt") or sample.get("caption")
    if text:
        members.append((f"{key}.txt", text.encode("utf-8")))
    meta = {**sample_metadata, **sample, **fields}
    members.append((f"{key}.json", json.dumps(json_safe(meta), sort_keys=True).encode()))
    members += [(f"{key}.{ext}", data) for ext, data in rest]
    return members


def _read_existing(layout: OutputLayout, shard_name: str, base: dict) -> tuple[dict, dict]:
    """Members (by key) and manifest rows (by key) of the committed shard, to rewrite it with repairs."""
    paths = layout.committed_paths(shard_name, base)

    def read():
        data = layout.fs.cat_file(paths["tar"])
        members: dict[str, list[tuple[str, bytes]]] = {}
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar.getmembers():
                members.setdefault(member.name.split(".", 1)[0], []).append((member.name, tar.extractfile(member).read()))
        # Rejected inputs stay rejected; failed samples are what a repair runs again.
        table = read_table(layout.fs, paths["manifest"])
        rows = {row["key"]: row for row in table.to_pylist() if row.get("status", "ok") != "failed"}
        return members, rows

    return layout.retrying(f"reading shard {shard_name} to repair it", read)


def write_shard(
    output_url: str,
    storage: StorageConfig | None,
    shard_name: str,
    samples: list[dict],
    sample_metadata: dict,
    failed: list[dict],
    base: dict | None,
    faults: tuple,
    *batches: dict,
) -> dict:
    """Write the shard and return its commit marker.

    `samples` are the planned samples in order; `batches` are the last stage's outputs (files and
    fields per sample, see pipelines/pipeline.py; top-level arguments, so Ray hands them over
    resolved); `failed` the samples that failed after their retries. Samples a stage rejected
    (bad input) are manifest rows with status "rejected". `base` is the marker of the committed
    shard a repair starts from (None for a first write): samples neither produced nor failed now are
    copied from it, and the new files get the next revision's names. Ray may run this again after a
    worker died: the same arguments write the same names from the same base.
    """
    started = time.perf_counter()
    layout = OutputLayout(output_url, storage)
    revision = base.get("revision", 0) + 1 if base is not None else 0
    files = shard_files(shard_name, revision)
    paths = {kind: layout.path("shards", filename) for kind, filename in files.items()}
    old_members, old_rows = _read_existing(layout, shard_name, base) if base is not None else ({}, {})
    outcome = ShardOutcome.of(batches, failed, old_members, old_rows)
    entries = shard_entries(shard_name, samples, outcome, sample_metadata)
    counted = layout.retrying(f"writing shard {shard_name}",
                              lambda: write_tar(layout, paths["tar"], entries, lambda: fault_injection.during_write(faults, shard_name)))
    rows = [row for _, row in entries]
    manifest = manifest_bytes(rows)
    layout.retrying(f"writing manifest {shard_name}", lambda: write_atomic(layout.fs, paths["manifest"], manifest))
    marker = {
        **marker_counts(shard_name, rows), "revision": revision,
        **files,  # the files that are this shard now: index.json and readers follow these names
        "tar_bytes": counted.size, "tar_sha256": counted.sha256.hexdigest(),
        "manifest_bytes": len(manifest), "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        "write_seconds": time.perf_counter() - started,
    }
    # Written last: until it exists the shard does not count and the next run rewrites it.
    marker_path = layout.shard_paths(shard_name)["marker"]
    layout.retrying(f"committing shard {shard_name}", lambda: write_json(layout.fs, marker_path, marker))
    return marker


@dataclass(frozen=True)
class ShardOutcome:
    """What became of a shard's samples: produced now (files, fields, stage times), rejected (bad
    input), failed after their retries, or kept from the committed revision a repair starts from."""

    produced: dict  # key -> (files, fields, timings)
    rejected: dict  # key -> reason
    failures: dict  # key -> failure record
    old_members: dict  # key -> tar members of the committed revision
    old_rows: dict  # key -> manifest row of the committed revision

    @classmethod
    def of(cls, batches, failed: list[dict], old_members: dict, old_rows: dict) -> "ShardOutcome":
        produced, rejected = {}, {}
        for batch in batches:
            rejected.update(batch.get("rejected", {}))
            for key, sample_files, fields in zip(batch["keys"], batch["files"], batch["fields"]):
                produced[key] = (sample_files, fields, batch["timings"])
        return cls(produced, rejected, {f["key"]: f for f in failed}, old_members, old_rows)

    def known(self) -> set:
        return self.produced.keys() | self.rejected.keys() | self.failures.keys() | self.old_rows.keys()


def shard_entries(shard_name: str, samples: list[dict], outcome: ShardOutcome,
                  sample_metadata: dict) -> list[tuple[list[tuple[str, bytes]], dict]]:
    """Pure: per planned sample, in order, its tar members (none for rejected and failed samples)
    and its manifest row."""
    missing = [s["key"] for s in samples if s["key"] not in outcome.known()]
    if missing:
        raise ValueError(f"shard {shard_name}: no output and no recorded failure for samples {missing[:5]}")
    entries = []
    for sample in samples:
        key = sample["key"]
        # Nested values of a sample (an input's source location, its original metadata) are JSON text
        # in the manifest, so every shard's manifest has the same flat schema.
        flat = {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for k, v in sample.items()}
        if key in outcome.produced:
            sample_files, fields, stage_times = outcome.produced[key]
            timings = {f"{stage}_ms": 1000 * s for stage, s in stage_times.items()}
            primary_ext, primary = next(iter(sample_files.items()))
            row = {**flat, "shard": shard_name, "status": "ok", "error": None, **fields,
                   "format": primary_ext, "bytes": len(primary), **timings}
            entries.append((sample_members(sample, sample_files, fields, sample_metadata), row))
        elif key in outcome.old_rows:
            entries.append((outcome.old_members.get(key, []), outcome.old_rows[key]))
        elif key in outcome.rejected:
            entries.append(([], {**flat, "shard": shard_name, "status": "rejected", "error": outcome.rejected[key]}))
        else:
            f = outcome.failures[key]
            entries.append(([], {**flat, "shard": shard_name, "status": "failed", "error": f["error"],
                                 "failed_stage": f["stage"], "attempts": f["attempts"]}))
    return entries


def write_tar(layout: OutputLayout, path: str, entries: list, halfway=lambda: None) -> _HashingWriter:
    """Stream the entries' members to `path` as one tar; returns its size and sha256. `halfway` runs
    when half the samples are written (fault injection: a write that dies mid-tar)."""
    with streaming_writer(layout.fs, path) as raw:
        counted = _HashingWriter(raw)
        with tarfile.open(fileobj=counted, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            for position, (members, _) in enumerate(entries):
                if position == len(entries) // 2:
                    halfway()
                for name, data in members:
                    _add(tar, name, data)
    return counted


def manifest_bytes(rows: list[dict]) -> bytes:
    # Every row gets every column (failed rows have no size, ok rows no error): from_pylist takes
    # its schema from the first row alone.
    columns = list(dict.fromkeys(column for row in rows for column in row))
    return table_to_bytes(pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]))


def marker_counts(shard_name: str, rows: list[dict]) -> dict:
    status = [r["status"] for r in rows]
    return {"shard": shard_name, "samples": status.count("ok"), "failed": status.count("failed"),
            "failed_keys": [r["key"] for r in rows if r["status"] == "failed"], "rejected": status.count("rejected")}
