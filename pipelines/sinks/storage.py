"""Small fsspec helpers shared by the sink, the layout and verify."""

from __future__ import annotations

import json
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


def open_output(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, root.rstrip("/")


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Readers see the old or the new content, never a torn file.

    An object store PUT is atomic already; on a local disk we write a temporary file and rename.
    """
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(fs._parent(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)


def write_json(fs, path: str, obj: Any) -> None:
    write_atomic(fs, path, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(fs, path: str) -> Any:
    with fs.open(path, "rb") as f:
        return json.loads(f.read())
