"""What the image sources share (folder, list and tar planning in images, image_lists and tars):
the spec field their errors name, sample keys by position, and URLs fsspec opens again anywhere."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.implementations.local import LocalFileSystem

from pipelines.plan import KEY_DIGITS

URL_FIELD = "input.url"


def position_keys(count: int, start: int = 0) -> pa.Array:
    """`sample_key` of positions start..start+count-1, computed in Arrow (no Python string each)."""
    numbers = pc.cast(pa.array(np.arange(start, start + count, dtype=np.int64)), pa.string())
    return pc.utf8_lpad(numbers, KEY_DIGITS, "0")


def full_url(fs, path: str) -> str:
    """What fsspec opens again anywhere: a plain absolute path locally, protocol://path elsewhere."""
    if isinstance(fs, LocalFileSystem):
        return path
    return fs.unstrip_protocol(path.rstrip("/")) + ("/" if path.endswith("/") else "")
