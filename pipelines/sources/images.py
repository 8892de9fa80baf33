"""Image sources: plan the samples of a webdataset output, a folder of images or a list of paths.

Every sample's key and location is fixed before anything runs, as for prompts, so resume, verify
and exactly-once commits work the same. The plan holds no image: one Arrow table with a small row
per sample (key, prompt, URL, tar member offsets, original metadata), about 100 bytes a sample,
and no Python object per sample beyond the shard being worked on.

    plan = plan_images("s3://bucket/photos/", samples_per_shard=256, storage=storage)
    shard = plan.shard(0)                        # ShardPlan of ImageSample, as pipelines.plan's
    data = read_member(shard.samples[0].as_dict(), "image", storage)   # in a stage actor

Kinds of input (`input.format`, "auto" tells them apart):
- webdataset: latentmill's own output (keys, prompts and metadata from its index.json and
  manifests, no bucket listing), or any `.tar` shards: a directory of them, one tar, or a brace
  (`shards-{000..009}.tar`) or `::`-separated list. Keys are the tars' own `__key__`s.
- folder: image files under a directory, recursively, in sorted relative-path order.
- list: a Parquet or JSONL file with a path column (`image`, `path` or `url`) and optionally
  `caption` or `prompt`; other columns are kept as metadata.
Folders and lists get keys `%09d` of their position (sorted paths; the list's own row order).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import StorageConfig
from pipelines.errors import ConfigError
from pipelines.plan import ITERATION_CHUNK, ShardedPlan
from pipelines.sinks.storage import storage_options
from pipelines.sources import image_lists, tars
from pipelines.sources.locations import URL_FIELD, full_url, position_keys

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
FORMATS = ("auto", "webdataset", "folder", "list")
LIST_SUFFIXES = (".parquet", ".jsonl")


@dataclass(frozen=True)
class ImageSample:
    index: int
    key: str
    prompt: str
    url: str
    # Tar members: extension -> (offset, size) of its data in the tar at `url`. None: `url` is the
    # image file itself.
    members: dict[str, tuple[int, int]] | None = None
    metadata: dict | None = None

    def as_dict(self) -> dict:
        source: dict = {"url": self.url}
        if self.members is not None:
            source["members"] = {ext: list(span) for ext, span in self.members.items()}
        return {"key": self.key, "index": self.index, "prompt": self.prompt, "source": source,
                "metadata": self.metadata}


@dataclass(frozen=True, eq=False)
class ImagePlan(ShardedPlan):
    """Samples as rows of `rows`: key, prompt, location, [members: list<struct<ext, offset, size>>], [metadata].

    A location is a URL, an absolute path, or a path relative to `base` (the folder, or the list's
    directory): stored as the input gives it and resolved per chunk, so long prefixes are not
    repeated a million times.
    """

    rows: pa.Table
    samples_per_shard: int
    input_format: str  # "latentmill", "webdataset", "folder" or "list"
    url: str
    base: str = ""

    def __len__(self) -> int:
        return self.rows.num_rows

    def samples_between(self, start: int, stop: int) -> list[ImageSample]:
        out = []
        part = self.rows.slice(start, max(0, stop - start))
        urls = self._urls(part).to_pylist()
        for offset, row in enumerate(part.to_pylist()):
            members = row.get("members")
            out.append(ImageSample(
                index=start + offset,
                key=row["key"],
                prompt=row["prompt"],
                url=urls[offset],
                members=None if members is None else {m["ext"]: (m["offset"], m["size"]) for m in members},
                metadata=row.get("metadata"),
            ))
        return out

    def table(self, start: int, stop: int) -> pa.Table:
        """Rows `start` to `stop` of plan.parquet: key, prompt, source (file or tar URL), shard."""
        part = self.rows.slice(start, max(0, min(stop, len(self)) - start))
        shard = pa.array(range(start, start + part.num_rows), pa.int32()) if part.num_rows else pa.array([], pa.int32())
        shard = pc.divide(shard, pa.scalar(self.samples_per_shard, pa.int32()))
        return pa.table({
            "key": part.column("key"),
            "prompt": part.column("prompt"),
            "source": self._urls(part),
            "shard": shard,
        })

    def _urls(self, part: pa.Table) -> pa.Array:
        locations = part.column("location").combine_chunks().cast(pa.string())
        return resolve_locations(self.base, locations) if self.base else locations

    def digest(self) -> str:
        """Changes when any key, prompt, location, member span or metadata does, or the sharding."""
        h = hashlib.sha256(json.dumps([self.input_format, self.samples_per_shard, self.base]).encode())
        for batch in self.rows.to_batches(max_chunksize=ITERATION_CHUNK):
            h.update(json.dumps(batch.to_pydict(), sort_keys=True, default=str).encode())
        return h.hexdigest()


def plan_images(
    url: str | None,
    *,
    samples_per_shard: int,
    format: str = "auto",
    storage: StorageConfig | None = None,
) -> ImagePlan:
    """Plan an image source; ConfigError (naming input.url / input.format) when it cannot be."""
    if not url or not str(url).strip():
        raise ConfigError(URL_FIELD, "", detail="an image source is needed: a webdataset output, a folder or a list file")
    if format not in FORMATS:
        raise ConfigError("input.format", "", detail=f"unsupported format {format!r}; expected one of {', '.join(FORMATS)}")
    fs, root = _filesystem(url, storage)
    kind = format if format != "auto" else detect_format(url, fs, root)
    if kind == "webdataset":
        input_format, rows = tars.plan_tars(url, fs, root)
        return ImagePlan(rows, samples_per_shard, input_format, url)
    if kind == "list":
        base = full_url(fs, posixpath.dirname(root))
        return ImagePlan(image_lists.read_list(url, fs, root), samples_per_shard, "list", url, base)
    return ImagePlan(plan_folder(url, fs, root), samples_per_shard, "folder", url, full_url(fs, root))


def detect_format(url: str, fs, root: str) -> str:
    if tars.is_pattern(url) or root.endswith(".tar"):
        return "webdataset"
    if root.endswith(LIST_SUFFIXES):
        return "list"
    if not fs.isdir(root):
        what = "does not exist" if not fs.exists(root) else "is a file, but neither a .tar nor a .parquet/.jsonl list"
        raise ConfigError(URL_FIELD, "", detail=f"{url!r} {what}")
    if tars.is_latentmill_output(fs, root) or any(p.endswith(".tar") for p in fs.find(root)):
        return "webdataset"
    return "folder"


def plan_folder(url: str, fs, root: str) -> pa.Table:
    """Image files under `root`, recursively, sorted by relative path; keys are their positions."""
    if not fs.isdir(root):
        raise ConfigError(URL_FIELD, "", detail=f"{url!r} is not a directory (input.format folder)")
    base = root.rstrip("/") + "/"
    # Arrow chunks, not a Python list of every name: a million paths stay compact.
    chunks, names = [], []
    for path in fs.find(root):
        if extension(path) in IMAGE_EXTENSIONS:
            names.append(path[len(base):])
            if len(names) == 65536:
                chunks.append(pa.array(names, pa.string()))
                names = []
    chunks.append(pa.array(names, pa.string()))
    relative = pa.concat_arrays(chunks)
    if len(relative) == 0:
        raise ConfigError(URL_FIELD, "", detail=f"no images found under {url!r} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    relative = relative.take(pc.sort_indices(relative))
    return pa.table({
        "key": position_keys(len(relative)),
        "prompt": pa.repeat(pa.scalar("", pa.string()), len(relative)),
        "location": relative,
        "metadata": pa.StructArray.from_arrays([relative], names=["path"]),  # shares the location's buffers
    })


def resolve_locations(base: str, locations: pa.Array) -> pa.Array:
    """URLs stay as they are; absolute paths live on `base`'s filesystem; others are relative to `base`."""
    relative = pc.binary_join_element_wise(base.rstrip("/") + "/", locations, "")
    is_url = pc.match_substring(locations, "://")
    kept = pc.or_(is_url, pc.starts_with(locations, "/"))
    if not pc.any(kept).as_py():  # the usual case: every location relative
        return relative
    protocol = base.split("://")[0] if "://" in base else None
    absolute = pc.binary_join_element_wise(f"{protocol}:/", locations, "") if protocol else locations
    return pc.if_else(is_url, locations, pc.if_else(kept, absolute, relative))


def extension(path: str) -> str:
    name = posixpath.basename(path)
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _filesystem(url: str, storage: StorageConfig | None):
    fs, root = fsspec.core.url_to_fs(url, **storage_options(url, storage))
    return fs, root.rstrip("/") or root
