"""A list of images: a Parquet or JSONL file with a path column and optional captions.

The path column is the first of `image`, `path`, `url`; the caption the first of `caption`,
`prompt`. Relative paths are relative to the list's own directory; URLs (`s3://`, `https://`)
are kept as they are. Every other column is kept as the sample's metadata. Arrow reads the file
column-wise, so a million rows cost tens of MB, not a million Python dicts.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from pipelines.errors import ConfigError
from pipelines.sources.locations import URL_FIELD, position_keys

PATH_COLUMNS = ("image", "path", "url")
CAPTION_COLUMNS = ("caption", "prompt")
JSON_BLOCK_BYTES = 16 << 20  # Arrow's JSON reader needs each line to fit in one block
BATCH_ROWS = 65536


def read_list(url: str, fs, root: str) -> pa.Table:
    """Rows key, prompt, url[, metadata], built batch by batch: memory is the result plus one batch."""
    if not fs.isfile(root):
        raise ConfigError(URL_FIELD, "", detail=f"image list {url!r} does not exist")
    if not root.endswith((".parquet", ".jsonl")):
        raise ConfigError(URL_FIELD, "", detail=f"{url!r}: an image list must be a .parquet or .jsonl file")
    parts, count = [], 0
    with fs.open(root, "rb") as f:
        for batch in _batches(url, fs, root, f):
            parts.append(_samples(url, fs, root, batch, count))
            count += batch.num_rows
    if count == 0:
        raise ConfigError(URL_FIELD, "", detail=f"no images found: {url} has no rows")
    return pa.concat_tables(parts)


def _batches(url: str, fs, root: str, f):
    if root.endswith(".parquet"):
        try:
            yield from pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, use_threads=False)
        except (pa.ArrowException, OSError) as exc:
            raise ConfigError(URL_FIELD, "", detail=f"{url}: not a readable Parquet file ({exc})") from None
        return

    options = pj.ReadOptions(block_size=JSON_BLOCK_BYTES, use_threads=False)
    # Keys that first appear after the first block are not metadata columns (the schema is fixed then).
    parsing = pj.ParseOptions(unexpected_field_behavior="ignore")
    try:
        yield from pj.open_json(f, read_options=options, parse_options=parsing)
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


def _samples(url: str, fs, root: str, batch: pa.RecordBatch, first_row: int) -> pa.Table:
    names = batch.schema.names
    path_column = next((c for c in PATH_COLUMNS if c in names), None)
    if path_column is None:
        raise ConfigError(
            URL_FIELD, "",
            detail=f"{url}: no image path column; expected one of {', '.join(PATH_COLUMNS)} (columns: "
            f"{', '.join(names) or 'none'})",
        )
    paths = batch.column(path_column)
    if not pa.types.is_string(paths.type) and not pa.types.is_large_string(paths.type):
        raise ConfigError(URL_FIELD, "", detail=f"{url}: column {path_column!r} holds {paths.type}, expected strings")
    empty = pc.or_kleene(pc.is_null(paths), pc.equal(pc.utf8_trim_whitespace(paths), ""))
    if pc.any(empty).as_py():
        row = first_row + pc.index(empty, True).as_py()
        raise ConfigError(URL_FIELD, "", detail=f"{url}: row {row} has no {path_column!r} (expected a path or URL)")
    caption_column = next((c for c in CAPTION_COLUMNS if c in names), None)
    if caption_column is None:
        prompts = pa.repeat(pa.scalar("", pa.string()), batch.num_rows)
    else:
        prompts = pc.fill_null(batch.column(caption_column).cast(pa.string()), "")
    columns = {
        "key": position_keys(batch.num_rows, first_row),
        "prompt": prompts,
        "location": paths.cast(pa.string()),
    }
    others = [c for c in names if c not in (path_column, caption_column)]
    if others:
        columns["metadata"] = pa.StructArray.from_arrays([batch.column(c) for c in others], names=others)
    return pa.table(columns)
