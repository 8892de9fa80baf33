"""webdataset input: tar shards planned from their headers, each member's offset and size recorded.

A stage then range-reads exactly the member it needs (`fs.cat_file(path, start, end)`) instead of
streaming whole tars. Headers are read with seeks over the data, in 1 MiB blocks, several tars at
once (object stores are latency-bound). Keys and extensions follow webdataset's rule: the key is
the member path up to the first dot of its file name, the extension the rest, lower-cased.

A latentmill output is planned from its index.json and Parquet manifests (no bucket listing), so
keys, prompts and the manifests' metadata (index, seed, size) carry over to the new job.
"""

from __future__ import annotations

import json
import posixpath
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import ConfigError
from pipelines.sources.locations import URL_FIELD, full_url
from pipelines.tables import table_from_bytes

INDEX_FILE, JOB_FILE = "index.json", "latentmill.json"  # as pipelines/sinks/layout.py writes them
KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
MEMBERS_TYPE = pa.list_(pa.struct([("ext", pa.string()), ("offset", pa.int64()), ("size", pa.int64())]))
HEADER_BLOCK_BYTES = 1 << 20
CAPTION_EXTENSION, MAX_CAPTION_BYTES = "txt", 1 << 16
PARALLEL_TARS = 8
# Manifest columns that describe the old job's bookkeeping, not the sample.
NOT_METADATA = {"key", "prompt", "shard", "status", "error", "bytes", "format", "failed_stage", "attempts"}


def is_pattern(url: str) -> bool:
    return "{" in url or "::" in url


def is_latentmill_output(fs, root: str) -> bool:
    return fs.exists(posixpath.join(root, JOB_FILE)) and fs.exists(posixpath.join(root, INDEX_FILE))


def plan_tars(url: str, fs, root: str) -> tuple[str, pa.Table]:
    """("latentmill" or "webdataset", rows of the samples in tar order)."""
    if not is_pattern(url) and fs.isdir(root) and is_latentmill_output(fs, root):
        kind, tables = "latentmill", _in_parallel(lambda s: _latentmill_shard(url, fs, root, s), _committed(url, fs, root))
    else:
        kind, tables = "webdataset", _in_parallel(lambda path: _tar_samples(url, fs, path), _tar_paths(url, fs, root))
    table = pa.concat_tables(tables, promote_options="permissive")
    if table.num_rows == 0:
        raise ConfigError(URL_FIELD, "", detail=f"no samples found in the tar shards of {url!r}")
    _refuse_duplicate_keys(url, table)
    return kind, table


def scan_tar(fs, path: str, url: str) -> list[dict]:
    """[{key, members: [{ext, offset, size}, ...], prompt}, ...] in tar order, from the headers.

    The caption (`.txt`) is read too: it sits right after its header, in the block already read.
    """
    samples: list[dict] = []
    try:
        with fs.open(path, "rb", block_size=HEADER_BLOCK_BYTES) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                match = KEY_AND_EXTENSION.match(member.name) if member.isfile() else None
                if match is None:  # directories, links, names without an extension: not sample data
                    continue
                key, ext = match.group(1), match.group(2).lower()
                if not samples or samples[-1]["key"] != key:
                    samples.append({"key": key, "members": [], "prompt": ""})
                elif any(m["ext"] == ext for m in samples[-1]["members"]):
                    raise ConfigError(URL_FIELD, "", detail=f"{full_url(fs, path)}: member {member.name!r} appears twice")
                samples[-1]["members"].append({"ext": ext, "offset": member.offset_data, "size": member.size})
                if ext == CAPTION_EXTENSION and member.size <= MAX_CAPTION_BYTES:
                    samples[-1]["prompt"] = tar.extractfile(member).read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise ConfigError(URL_FIELD, "", detail=f"tar shard {full_url(fs, path)} does not exist (from {url!r})") from None
    except tarfile.TarError as exc:
        raise ConfigError(URL_FIELD, "", detail=f"{full_url(fs, path)} is not a readable tar file ({exc})") from None
    return samples


def _tar_paths(url: str, fs, root: str) -> list[str]:
    if is_pattern(url):
        # lazy: keeps braceexpand out of processes that never call this
        from braceexpand import braceexpand

        return [fs._strip_protocol(u) for part in url.split("::") for u in braceexpand(part.strip())]
    if root.endswith(".tar"):
        return [root]
    paths = sorted(p for p in fs.find(root) if p.endswith(".tar"))
    if not paths:
        raise ConfigError(URL_FIELD, "", detail=f"no .tar shards found under {url!r}")
    return paths


def _tar_samples(url: str, fs, path: str) -> pa.Table:
    samples = scan_tar(fs, path, url)
    keys, prompts, members = ([s[field] for s in samples] for field in ("key", "prompt", "members"))
    return _rows(full_url(fs, path), keys, prompts, members)


def _rows(tar_url: str, keys: list, prompts: list, members: list, metadata: pa.StructArray | None = None) -> pa.Table:
    n = len(keys)
    # The tar's URL once per tar, not once per sample.
    urls = pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int32()), pa.array([tar_url], pa.string()))
    columns = {"key": pa.array(keys, pa.string()), "prompt": pa.array(prompts, pa.string()), "location": urls,
               "members": pa.array(members, MEMBERS_TYPE)}
    if metadata is not None:
        columns["metadata"] = metadata
    return pa.table(columns)


def _committed(url: str, fs, root: str) -> list[dict]:
    index = json.loads(fs.cat_file(posixpath.join(root, INDEX_FILE)))
    if not index.get("shards"):
        raise ConfigError(URL_FIELD, "", detail=f"latentmill output {url!r} has no committed shards yet")
    return index["shards"]


def _latentmill_shard(url: str, fs, root: str, shard: dict) -> pa.Table:
    manifest = table_from_bytes(fs.cat_file(posixpath.join(root, shard["manifest"])))
    if "status" in manifest.column_names:  # failed samples have no data in the tar
        manifest = manifest.filter(pc.equal(manifest.column("status"), "ok"))
    tar_path = posixpath.join(root, shard["tar"])
    members = {s["key"]: s["members"] for s in scan_tar(fs, tar_path, url)}
    keys = manifest.column("key").to_pylist()
    missing = [k for k in keys if k not in members]
    extra = sorted(set(members) - set(keys))
    if missing or extra:
        raise ConfigError(
            URL_FIELD, "",
            detail=f"{url}: shard {shard['name']}: its tar and manifest disagree (in the manifest only: {missing[:5]}, "
            f"in the tar only: {extra[:5]}); run `latentmill verify` on it",
        )
    wanted = [c for c in manifest.column_names if c not in NOT_METADATA and not c.endswith("_ms")]
    metadata = None
    if wanted:
        manifest = manifest.combine_chunks()
        metadata = pa.StructArray.from_arrays([manifest.column(c).chunk(0) for c in wanted], names=wanted)
    prompts = manifest.column("prompt").to_pylist() if "prompt" in manifest.column_names else [""] * len(keys)
    return _rows(full_url(fs, tar_path), keys, prompts, [members[k] for k in keys], metadata)


def _in_parallel(function, items: list) -> list:
    if len(items) == 1:
        return [function(items[0])]
    with ThreadPoolExecutor(max_workers=min(PARALLEL_TARS, len(items))) as pool:
        return list(pool.map(function, items))


def _refuse_duplicate_keys(url: str, table: pa.Table) -> None:
    keys = table.column("key")
    if pc.count_distinct(keys).as_py() == len(keys):
        return
    counts = pc.value_counts(keys)
    duplicate = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
    where = pc.indices_nonzero(pc.equal(keys, duplicate)).to_pylist()[:2]
    places = [table.column("location")[i].as_py() for i in where]
    raise ConfigError(
        URL_FIELD, "",
        detail=f"{url}: key {duplicate!r} appears more than once (in {places[0]} and {places[1]}); the keys of a "
        "webdataset input name its samples and must be unique across all of its shards",
    )
