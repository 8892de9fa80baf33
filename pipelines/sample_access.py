"""One sample of an output by its key: its manifest row, then one range read per file of its tar.

The plan names the shard a key belongs to, index.json the shard's committed manifest and tar, the
manifest row the byte spans of the sample's files (pipelines/sinks/tar_offsets.py). So reading a
sample costs three small reads and one range read per file, on local disk or S3 alike, however
large the tar is.
"""

from __future__ import annotations

import posixpath

import pyarrow.compute as pc

from pipelines.errors import LatentmillError
from pipelines.plan import shard_name
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.storage import read_table
from pipelines.sinks.tar_offsets import file_spans


class UnknownKey(LatentmillError):
    """The key is not a sample of this output (a usage error: the command named it)."""

    exit_code = 2


def shard_of(layout: OutputLayout, key: str) -> str:
    """The name of the shard the plan puts `key` in."""
    plan = layout.read_plan_table(columns=("key", "shard"))
    found = plan.filter(pc.equal(plan.column("key"), key))
    if found.num_rows == 0:
        raise UnknownKey(f"{layout.url}: no sample has the key {key!r} (plan.parquet lists every planned key)")
    return shard_name(found.column("shard")[0].as_py())


def manifest_row(layout: OutputLayout, key: str) -> dict:
    """The sample's manifest row, with `tar_path` (the committed tar it is in) added."""
    name = shard_of(layout, key)
    entry = next((s for s in layout.read_index()["shards"] if s["name"] == name), None)
    if entry is None:
        raise UnknownKey(f"{layout.url}: sample {key!r} belongs to shard {name}, which is not committed yet")
    table = layout.retrying(f"reading manifest {name}", lambda: read_table(layout.fs, layout.path(entry["manifest"])))
    rows = table.filter(pc.equal(table.column("key"), key)).to_pylist()
    if not rows:
        raise UnknownKey(f"{layout.url}: shard {name}'s manifest has no row for {key!r}")
    return {**rows[0], "tar_path": layout.path(entry["tar"])}


def read_files(layout: OutputLayout, row: dict) -> dict[str, bytes]:
    """extension -> bytes of a manifest row's files: one range read each (rows before byte spans
    were recorded, and failed or rejected rows, have none: an empty dict)."""
    path = row["tar_path"]
    # start and end by name: s3fs's cat_file takes a version id second.
    return {
        ext: layout.retrying(f"reading {key_file(row['key'], ext)} from {posixpath.basename(path)}",
                             lambda offset=offset, size=size: layout.fs.cat_file(path, start=offset, end=offset + size))
        for ext, (offset, size) in file_spans(row).items()
    }


def key_file(key: str, ext: str) -> str:
    return f"{key}.{ext}"
