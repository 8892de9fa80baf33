"""Write one shard: a webdataset tar streamed to storage, its Parquet manifest, then its marker.

Every tar member has a fixed mtime and owner, so the same samples always give the same bytes.
Samples that failed after their retries are not in the tar; they are rows of the manifest with
status "failed" and their error, and the marker counts them.

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

import numpy as np
import pyarrow as pa

from pipelines import faults as fault_injection
from pipelines.config import StorageConfig
from pipelines.sinks.layout import OutputLayout, shard_files
from pipelines.sinks.storage import read_table, streaming_writer, write_atomic, write_json
from pipelines.tables import table_to_bytes

EXTENSIONS = {"png": "png", "jpg": "jpg", "webp": "webp"}


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


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _new_members(sample: dict, item: dict, ext: str, sample_metadata: dict) -> list[tuple[str, bytes]]:
    key = sample["key"]
    meta = {**sample_metadata, **sample, "height": item["height"], "width": item["width"]}
    members = [
        (f"{key}.{ext}", item["image"]),
        (f"{key}.txt", sample["prompt"].encode("utf-8")),
        (f"{key}.json", json.dumps(meta, sort_keys=True).encode()),
    ]
    if item["latents"] is not None:
        members.append((f"{key}.latent.npy", _npy_bytes(item["latents"])))
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
        table = read_table(layout.fs, paths["manifest"])
        rows = {row["key"]: row for row in table.to_pylist() if row.get("status", "ok") == "ok"}
        return members, rows

    return layout.retrying(f"reading shard {shard_name} to repair it", read)


def write_shard(
    output_url: str,
    storage: StorageConfig | None,
    shard_name: str,
    samples: list[dict],
    sample_metadata: dict,
    image_format: str,
    failed: list[dict],
    base: dict | None,
    faults: tuple,
    *decoded_batches: dict,
) -> dict:
    """Write the shard and return its commit marker.

    `samples` are the planned samples (key, index, prompt, seed) in order; `decoded_batches` hold
    the encoded images and per-sample stage timings of those that succeeded (top-level arguments,
    so Ray hands them over resolved); `failed` the ones that did not. `base` is the marker of the
    committed shard a repair starts from (None for a first write): samples neither decoded nor
    failed now are copied from it, and the new files get the next revision's names. Ray may run
    this again after a worker died: the same arguments write the same names from the same base.
    """
    started = time.perf_counter()
    layout = OutputLayout(output_url, storage)
    revision = base.get("revision", 0) + 1 if base is not None else 0
    files = shard_files(shard_name, revision)
    paths = {kind: layout.path("shards", filename) for kind, filename in files.items()}
    paths["marker"] = layout.shard_paths(shard_name)["marker"]
    decoded = {}
    for batch in decoded_batches:
        for i, key in enumerate(batch["keys"]):
            decoded[key] = {
                "image": batch["images"][i],
                "latents": batch["latents"][i] if "latents" in batch else None,
                "height": batch["height"],
                "width": batch["width"],
                "timings": batch["timings"],
            }
    failures = {f["key"]: f for f in failed}
    old_members, old_rows = _read_existing(layout, shard_name, base) if base is not None else ({}, {})
    missing = [s["key"] for s in samples if s["key"] not in decoded and s["key"] not in failures and s["key"] not in old_rows]
    if missing:
        raise ValueError(f"shard {shard_name}: no image and no recorded failure for samples {missing[:5]}")

    ext = EXTENSIONS[image_format]
    rows: list[dict] = []

    def write_tar():
        rows.clear()
        with streaming_writer(layout.fs, paths["tar"]) as raw:
            counted = _HashingWriter(raw)
            with tarfile.open(fileobj=counted, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
                for position, sample in enumerate(samples):
                    if position == len(samples) // 2:
                        fault_injection.during_write(faults, shard_name)
                    key = sample["key"]
                    if key in decoded:
                        item = decoded[key]
                        members = _new_members(sample, item, ext, sample_metadata)
                        timings = {f"{stage}_ms": 1000 * s for stage, s in item["timings"].items()}
                        row = {**sample, "shard": shard_name, "status": "ok", "error": None, "width": item["width"],
                               "height": item["height"], "format": ext, "bytes": len(item["image"]), **timings}
                    elif key in old_rows:
                        members, row = old_members[key], old_rows[key]
                    else:
                        f = failures[key]
                        rows.append({**sample, "shard": shard_name, "status": "failed", "error": f["error"],
                                     "failed_stage": f["stage"], "attempts": f["attempts"]})
                        continue
                    for name, data in members:
                        _add(tar, name, data)
                    rows.append(row)
        return counted

    counted = layout.retrying(f"writing shard {shard_name}", write_tar)
    # Every row gets every column (failed rows have no size, ok rows no error): from_pylist takes
    # its schema from the first row alone.
    columns = list(dict.fromkeys(column for row in rows for column in row))
    manifest_bytes = table_to_bytes(pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]))
    layout.retrying(f"writing manifest {shard_name}", lambda: write_atomic(layout.fs, paths["manifest"], manifest_bytes))

    ok_rows = [r for r in rows if r["status"] == "ok"]
    marker = {
        "shard": shard_name,
        "samples": len(ok_rows),
        "failed": len(rows) - len(ok_rows),
        "failed_keys": [r["key"] for r in rows if r["status"] == "failed"],
        "revision": revision,
        **files,  # the files that are this shard now: index.json and readers follow these names
        "tar_bytes": counted.size,
        "tar_sha256": counted.sha256.hexdigest(),
        "manifest_bytes": len(manifest_bytes),
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "write_seconds": time.perf_counter() - started,
    }
    # Written last: until it exists the shard does not count and the next run rewrites it.
    layout.retrying(f"committing shard {shard_name}", lambda: write_json(layout.fs, paths["marker"], marker))
    return marker
