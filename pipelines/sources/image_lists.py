"""A list of images: a Parquet or JSONL file with a path column and optional captions.

The path column is the first of `image`, `path`, `url`; the caption the first of `caption`,
`prompt`. Relative paths are relative to the list's own directory; URLs (`s3://`, `https://`)
are kept as they are. Every other column is kept as the sample's metadata. Arrow reads the file
column-wise, so a million rows cost tens of MB, not a million Python dicts.
"""

from __future__ import annotations

import json
import posixpath

import pyarrow as pa
import pyarrow.compute as pc
from fsspec.implementations.local import LocalFileSystem

from pipelines.errors import ConfigError
from pipelines.sources.images import URL_FIELD, full_url, position_keys

PATH_COLUMNS = ("image", "path", "url")
CAPTION_COLUMNS = ("caption", "prompt")
JSON_BLOCK_BYTES = 16 << 20  # Arrow's JSON reader needs each line to fit in one block


def read_list(url: str, fs, root: str) -> pa.Table:
    if not fs.isfile(root):
        raise ConfigError(URL_FIELD, "", detail=f"image list {url!r} does not exist")
    if root.endswith(".parquet"):
        table = _read_parquet(url, fs, root)
    elif root.endswith(".jsonl"):
        table = _read_jsonl(url, fs, root)
    else:
        raise ConfigError(URL_FIELD, "", detail=f"{url!r}: an image list must be a .parquet or .jsonl file")
    return _samples(url, fs, root, table)


def _read_parquet(url: str, fs, root: str) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        with fs.open(root, "rb") as f:
            return pq.read_table(f)
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(URL_FIELD, "", detail=f"{url}: not a readable Parquet file ({exc})") from None


def _read_jsonl(url: str, fs, root: str) -> pa.Table:
    import pyarrow.json as pj

    try:
        with fs.open(root, "rb") as f:
            return pj.read_json(f, read_options=pj.ReadOptions(block_size=JSON_BLOCK_BYTES))
    except pa.ArrowInvalid as exc:
        # Arrow counts rows, not lines; find the line a person can open.
        raise ConfigError(URL_FIELD, "", detail=_first_bad_line(url, fs, root) or f"{url}: {exc}") from None


def _first_bad_line(url: str, fs, root: str) -> str | None:
    with fs.open(root, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                return f"{url}:{number}: not valid JSON ({getattr(exc, 'msg', exc)})"
            if not isinstance(record, dict):
                return f"{url}:{number}: expected a JSON object per line, got {type(record).__name__}"
    return None


def _samples(url: str, fs, root: str, table: pa.Table) -> pa.Table:
    path_column = next((c for c in PATH_COLUMNS if c in table.column_names), None)
    if path_column is None:
        raise ConfigError(
            URL_FIELD, "",
            detail=f"{url}: no image path column; expected one of {', '.join(PATH_COLUMNS)} (columns: "
            f"{', '.join(table.column_names) or 'none'})",
        )
    if table.num_rows == 0:
        raise ConfigError(URL_FIELD, "", detail=f"no images found: {url} has no rows")
    paths = table.column(path_column)
    if not pa.types.is_string(paths.type) and not pa.types.is_large_string(paths.type):
        raise ConfigError(URL_FIELD, "", detail=f"{url}: column {path_column!r} holds {paths.type}, expected strings")
    empty = pc.or_kleene(pc.is_null(paths), pc.equal(pc.utf8_trim_whitespace(paths), ""))
    if pc.any(empty).as_py():
        row = pc.index(empty, True).as_py()
        raise ConfigError(URL_FIELD, "", detail=f"{url}: row {row} has no {path_column!r} (expected a path or URL)")
    caption_column = next((c for c in CAPTION_COLUMNS if c in table.column_names), None)
    if caption_column is None:
        prompts = pa.repeat(pa.scalar("", pa.string()), table.num_rows)
    else:
        prompts = pc.fill_null(table.column(caption_column).cast(pa.string()), "")
    columns = {
        "key": position_keys(table.num_rows),
        "prompt": prompts,
        "url": _resolve(fs, root, paths.cast(pa.string())),
    }
    others = [c for c in table.column_names if c not in (path_column, caption_column)]
    if others:
        table = table.combine_chunks()
        columns["metadata"] = pa.StructArray.from_arrays([table.column(c).chunk(0) for c in others], names=others)
    return pa.table(columns)


def _resolve(fs, root: str, paths: pa.ChunkedArray) -> pa.ChunkedArray:
    """URLs stay as they are; absolute paths live on the list's filesystem; others are relative to it."""
    directory = posixpath.dirname(root)
    is_url = pc.match_substring(paths, "://")
    absolute = pc.starts_with(paths, "/")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    on_list_fs = paths if isinstance(fs, LocalFileSystem) else pc.binary_join_element_wise(f"{protocol}:/", paths, "")
    relative = pc.binary_join_element_wise(full_url(fs, directory).rstrip("/") + "/", paths, "")
    return pc.if_else(is_url, paths, pc.if_else(absolute, on_list_fs, relative))
