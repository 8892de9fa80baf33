"""Where each file of a sample lies in its shard's tar, so one file is one range read.

A USTAR member is one 512-byte header followed by its data padded to a multiple of 512 bytes, and
the writer adds members one after another, so positions follow from the members' sizes alone: no
need to hold the tar in memory or to read it back. The manifest stores them per sample as JSON text
(`tar_files`: {"png": [offset, size], "txt": [...], ...}), as it does every nested value, so that
every shard's manifest keeps the same flat schema.
"""

from __future__ import annotations

import json

BLOCK = 512


def padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


class TarSpans:
    """Counts the bytes of the members added so far; `add` gives a sample's manifest columns."""

    def __init__(self) -> None:
        self.position = 0

    def add(self, members: list[tuple[str, bytes]]) -> dict:
        files = {}
        for name, data in members:
            files[name.split(".", 1)[1]] = [self.position + BLOCK, len(data)]
            self.position += BLOCK + padded(len(data))
        return {"tar_files": json.dumps(files)}


def file_spans(row: dict) -> dict[str, tuple[int, int]]:
    """extension -> (offset, size) of a manifest row's files in its tar; {} for rows without files."""
    text = row.get("tar_files")
    return {ext: (int(offset), int(size)) for ext, (offset, size) in json.loads(text).items()} if text else {}
