"""Write one shard: a webdataset tar streamed to storage, its Parquet manifest, then its marker.

Every tar member has a fixed mtime and owner, so the same samples always give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.storage import write_atomic, write_json

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


def write_shard(
    output_url: str,
    storage_options: dict | None,
    shard_name: str,
    samples: list[dict],
    sample_metadata: dict,
    image_format: str,
    *decoded_batches: dict,
) -> dict:
    """Write the shard and return its commit marker.

    `samples` are the planned samples (key, index, prompt, seed) in order; `decoded_batches` hold
    their encoded images and per-sample stage timings (top-level arguments, so Ray hands them over
    resolved). Rewriting a shard gives the same bytes.
    """
    started = time.perf_counter()
    layout = OutputLayout(output_url, storage_options)
    paths = layout.shard_paths(shard_name)
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
    missing = [s["key"] for s in samples if s["key"] not in decoded]
    if missing:
        raise ValueError(f"shard {shard_name}: no decoded image for keys {missing[:5]}")

    ext = EXTENSIONS[image_format]
    rows = []
    layout.fs.makedirs(layout.path("shards"), exist_ok=True)
    with layout.fs.open(paths["tar"], "wb") as raw:
        counted = _HashingWriter(raw)
        with tarfile.open(fileobj=counted, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            for sample in samples:
                key, item = sample["key"], decoded[sample["key"]]
                meta = {**sample_metadata, **sample, "height": item["height"], "width": item["width"]}
                _add(tar, f"{key}.{ext}", item["image"])
                _add(tar, f"{key}.txt", sample["prompt"].encode("utf-8"))
                _add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
                if item["latents"] is not None:
                    _add(tar, f"{key}.latent.npy", _npy_bytes(item["latents"]))
                rows.append(
                    {
                        "key": key,
                        "index": sample["index"],
                        "shard": shard_name,
                        "prompt": sample["prompt"],
                        "seed": sample["seed"],
                        "width": item["width"],
                        "height": item["height"],
                        "format": ext,
                        "bytes": len(item["image"]),
                        **{f"{stage}_ms": 1000 * seconds for stage, seconds in item["timings"].items()},
                    }
                )

    manifest = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    manifest_bytes = manifest.getvalue()
    write_atomic(layout.fs, paths["manifest"], manifest_bytes)

    marker = {
        "shard": shard_name,
        "samples": len(rows),
        "failed": 0,
        "first_key": rows[0]["key"],
        "last_key": rows[-1]["key"],
        "tar_bytes": counted.size,
        "tar_sha256": counted.sha256.hexdigest(),
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "write_seconds": time.perf_counter() - started,
    }
    # Written last: until it exists the shard does not count and the next run rewrites it.
    write_json(layout.fs, paths["marker"], marker)
    return marker
