"""The driver's index of committed shards: a few bytes per shard, written to index.json on a timer.

A job of 10M samples has hundreds of thousands of shards. Keeping each commit marker (a dict with
hashes and failed keys) and rewriting index.json after every commit made the driver's memory grow
with the shard count and the bytes it wrote grow with its square. Here a shard costs 12 bytes
(its revision, samples and failed count, in arrays indexed by shard number), index.json is
streamed out entry by entry, and it is rewritten only when `interval_s` has passed since the last
write (and at least 20 times the last write's duration, so a large index costs the driver under
5% of its time), and at the end of a run. The commit markers stay the truth: a shard committed
since the last write is already whole, `latentmill verify` counts it (and calls the output
incomplete until it is listed), and every run starts by rebuilding the index from the markers.
"""

from __future__ import annotations

import json
import time

import numpy as np

from pipelines.plan import shard_name
from pipelines.sinks.layout import FORMAT_VERSION, INDEX_FILE, SHARD_DIR, WIDS_FILE, OutputLayout, shard_files
from pipelines.sinks.storage import streaming_writer

NOT_COMMITTED = -1


class ShardIndex:
    def __init__(self, num_shards: int, interval_s: float = 10.0):
        self.revision = np.full(num_shards, NOT_COMMITTED, dtype=np.int32)
        self.samples = np.zeros(num_shards, dtype=np.int32)
        self.failed = np.zeros(num_shards, dtype=np.int32)
        self.interval_s = interval_s
        self.writes = 0
        self._written_at = float("-inf")
        self._write_seconds = 0.0

    @classmethod
    def from_markers(cls, num_shards: int, markers: dict[str, dict], interval_s: float = 10.0) -> "ShardIndex":
        index = cls(num_shards, interval_s)
        for name, marker in markers.items():
            index.add(name, marker)
        return index

    def add(self, name: str, marker: dict) -> None:
        i = int(name)
        self.revision[i] = marker.get("revision", 0)
        self.samples[i] = marker["samples"]
        self.failed[i] = marker.get("failed", 0)

    @property
    def committed(self) -> int:
        return int((self.revision != NOT_COMMITTED).sum())

    @property
    def committed_samples(self) -> int:
        return int(self.samples[self.revision != NOT_COMMITTED].sum())

    def write(self, layout: OutputLayout) -> None:
        """index.json as readers expect it, streamed (never the whole text in memory)."""
        started = time.monotonic()
        committed = np.flatnonzero(self.revision != NOT_COMMITTED)

        def stream(f) -> None:
            f.write(b'{"format_version": %d, "failed": %d, "samples": %d, "shards": [' % (
                FORMAT_VERSION, int(self.failed[committed].sum()), int(self.samples[committed].sum())))
            for n, i in enumerate(committed):
                name = shard_name(int(i))
                files = shard_files(name, int(self.revision[i]))
                entry = {"name": name, "tar": f"{SHARD_DIR}/{files['tar']}",
                         "manifest": f"{SHARD_DIR}/{files['manifest']}",
                         "samples": int(self.samples[i]), "failed": int(self.failed[i])}
                f.write((", " if n else "").encode() + json.dumps(entry).encode())
            f.write(b"]}\n")

        def stream_wids(f) -> None:
            # webdataset's random-access reader (`wids.ShardListDataset(".../wids.json")`) resolves
            # these URLs against the folder the file is in; nsamples counts the tar's samples only.
            f.write(b'{"wids_version": 1, "shardlist": [')
            for n, i in enumerate(committed):
                tar = shard_files(shard_name(int(i)), int(self.revision[i]))["tar"]
                entry = {"url": f"{SHARD_DIR}/{tar}", "nsamples": int(self.samples[i])}
                f.write((", " if n else "").encode() + json.dumps(entry).encode())
            f.write(b"]}\n")

        def write_once() -> None:
            with streaming_writer(layout.fs, layout.path(INDEX_FILE)) as f:
                stream(f)
            with streaming_writer(layout.fs, layout.path(WIDS_FILE)) as f:
                stream_wids(f)

        layout.retrying("writing index.json", write_once)
        self.writes += 1
        self._written_at = time.monotonic()
        self._write_seconds = self._written_at - started

    def write_if_due(self, layout: OutputLayout) -> None:
        waited = time.monotonic() - self._written_at
        if waited >= max(self.interval_s, 20 * self._write_seconds):
            self.write(layout)
