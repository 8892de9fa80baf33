"""Every sample of an output as one Arrow table built from the committed shards' manifests, and the
queries the page asks of it: filters, pages, a sample by key, its neighbours with the same prompt.

A shard whose manifest cannot be read, or whose tar is missing or shorter than its manifest says,
is damaged: its samples come from the plan with status "damaged" and the reason, so the page shows
them and the rest still works.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.storage import read_table
from pipelines.sinks.tar_offsets import file_spans

READERS = 32  # manifests fetched at once: S3 latency, not bandwidth, bounds loading thousands of them
STATUSES = ("ok", "failed", "rejected", "damaged")


@dataclass(frozen=True)
class Filters:
    status: str | None = None
    flagged: bool = False
    psnr_below: float | None = None
    text: str | None = None
    shard: str | None = None

    def query(self) -> dict[str, str]:
        """The filters as URL query parameters (only those set)."""
        pairs = {"status": self.status, "flagged": "1" if self.flagged else None,
                 "psnr_below": None if self.psnr_below is None else f"{self.psnr_below:g}",
                 "q": self.text, "shard": self.shard}
        return {name: value for name, value in pairs.items() if value}


class Catalog:
    def __init__(self, layout: OutputLayout, flagged: set[str]):
        self.layout, self.flagged = layout, flagged
        self.shards = {entry["name"]: entry for entry in layout.read_index()["shards"]}
        self.damaged: dict[str, str] = {}
        self.table = self._load()
        self._keys = {key: i for i, key in enumerate(self.table.column("key").to_pylist())}

    def _load(self) -> pa.Table:
        sizes = self.layout.shard_sizes()
        with ThreadPoolExecutor(READERS) as pool:
            tables = list(pool.map(lambda entry: self._shard_table(entry, sizes), self.shards.values()))
        tables = [t for t in tables if t is not None]
        if not tables:
            return pa.table({"key": pa.array([], pa.string()), "status": pa.array([], pa.string())})
        # One chunk per column: a slice or filter over thousands of chunks (one per shard) costs
        # time in proportion to the chunks (measured: 0.7 s a grid page at 100K samples).
        return pa.concat_tables(tables, promote_options="permissive").combine_chunks()

    def _shard_table(self, entry: dict, sizes: dict) -> pa.Table | None:
        name = entry["name"]
        try:
            table = self.layout.retrying(f"reading manifest {name}",
                                         lambda: read_table(self.layout.fs, self.layout.path(entry["manifest"])))
        except Exception as exc:  # a damaged manifest: the page says why and shows the rest
            self.damaged[name] = f"manifest {entry['manifest']} cannot be read: {type(exc).__name__}: {exc}"
            return self._planned_rows(name)
        problem = tar_problem(entry, sizes, table)
        if problem:
            self.damaged[name] = problem
            table = table.set_column(table.column_names.index("status"), "status",
                                     pa.array(["damaged"] * table.num_rows, pa.string()))
            error = pa.array([problem] * table.num_rows, pa.string())
            table = table.set_column(table.column_names.index("error"), "error", error)
        return table

    def _planned_rows(self, name: str) -> pa.Table:
        plan = self.layout.read_plan_table(columns=None)
        rows = plan.filter(pc.equal(plan.column("shard"), int(name)))
        n = rows.num_rows
        return rows.drop_columns(["shard"]).append_column("shard", pa.array([name] * n, pa.string())).append_column(
            "status", pa.array(["damaged"] * n, pa.string())).append_column(
            "error", pa.array([self.damaged[name]] * n, pa.string()))

    def keep_first(self, count: int) -> None:
        """Only the first `count` samples from now on (a static export of part of an output)."""
        self.table = self.table.slice(0, count)
        self._keys = {key: i for i, key in enumerate(self.table.column("key").to_pylist())}

    # -- queries -------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        found = {item["values"]: item["counts"] for item in pc.value_counts(self.table.column("status")).to_pylist()}
        return {name: found.get(name, 0) for name in STATUSES}

    def select(self, filters: Filters) -> pa.Table:
        if filters == Filters():
            return self.table
        mask = pa.array([True] * self.table.num_rows)
        t = self.table
        if filters.status:
            mask = pc.and_(mask, pc.equal(t.column("status"), filters.status))
        if filters.flagged:
            mask = pc.and_(mask, pc.is_in(t.column("shard"), pa.array(sorted(self.flagged), pa.string())))
        if filters.psnr_below is not None:
            if "monitor_psnr" not in t.column_names:
                return t.slice(0, 0)
            mask = pc.and_kleene(mask, pc.less(t.column("monitor_psnr"), filters.psnr_below))
        if filters.text:
            mask = pc.and_(mask, pc.match_substring(pc.fill_null(t.column("prompt"), ""), filters.text, ignore_case=True))
        if filters.shard:
            mask = pc.and_(mask, pc.equal(t.column("shard"), filters.shard))
        return t.filter(pc.fill_null(mask, False))

    def page(self, filters: Filters, number: int, size: int) -> tuple[list[dict], int]:
        """The rows of page `number` (from 1) and how many rows match."""
        selected = self.select(filters)
        return self.with_paths(selected.slice((number - 1) * size, size).to_pylist()), selected.num_rows

    def row(self, key: str) -> dict | None:
        i = self._keys.get(key)
        return None if i is None else self.with_paths(self.table.slice(i, 1).to_pylist())[0]

    def neighbours(self, row: dict, limit: int = 24) -> list[dict]:
        """Other samples of the same prompt (other seeds), in key order."""
        if not row.get("prompt"):
            return []
        t = self.table
        same = t.filter(pc.and_(pc.equal(t.column("prompt"), row["prompt"]), pc.not_equal(t.column("key"), row["key"])))
        return self.with_paths(same.slice(0, limit).to_pylist())

    def with_paths(self, rows: list[dict]) -> list[dict]:
        for row in rows:
            entry = self.shards.get(row.get("shard"))
            row["tar_path"] = self.layout.path(entry["tar"]) if entry else None
        return rows


def tar_problem(entry: dict, sizes: dict, manifest: pa.Table) -> str | None:
    """Why a shard's tar cannot serve its samples (missing, or shorter than the manifest's spans)."""
    filename = posixpath.basename(entry["tar"])
    if filename not in sizes:
        return f"tar {entry['tar']} is missing"
    if "tar_files" not in manifest.column_names:
        return None
    needed = max((offset + size for text in manifest.column("tar_files").to_pylist() if text
                  for offset, size in file_spans({"tar_files": text}).values()), default=0)
    if sizes[filename] is not None and sizes[filename] < needed:
        return f"tar {entry['tar']} is truncated: {sizes[filename]} bytes, its manifest needs {needed}"
    return None
