"""Where everything of a job lives under its output URL, and what counts as committed.

    OUTPUT/
      latentmill.json          job identity (what decides the samples), planned counts, spec
      plan.parquet             every planned sample: key, prompt, seed, shard
      index.json               committed shards; loaders read this instead of listing a bucket
      shards/NNNNN.tar         webdataset shard
      shards/NNNNN.parquet     its manifest, one row per sample
      shards/NNNNN.done.json   commit marker, written last: a shard exists only once this does
      runs/RUN_ID.json         one report per run of the job

The marker is the truth; index.json is rebuilt from the markers at the start of every run, so a
driver killed between the two loses nothing.
"""

from __future__ import annotations

import io
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import OutputError
from pipelines.plan import Plan
from pipelines.sinks.storage import open_output, read_json, write_atomic, write_json

JOB_FILE = "latentmill.json"
PLAN_FILE = "plan.parquet"
INDEX_FILE = "index.json"
SHARD_DIR = "shards"
MARKER_SUFFIX = ".done.json"
FORMAT_VERSION = 1


class OutputLayout:
    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url
        self.fs, self.root = open_output(url, storage_options)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def shard_paths(self, name: str) -> dict[str, str]:
        base = self.path(SHARD_DIR, name)
        return {"tar": base + ".tar", "manifest": base + ".parquet", "marker": base + MARKER_SUFFIX}

    # -- the job -------------------------------------------------------------------------------

    def read_job(self) -> dict | None:
        path = self.path(JOB_FILE)
        return read_json(self.fs, path) if self.fs.exists(path) else None

    def claim(self, job_record: dict, plan: Plan) -> None:
        """Record the job here, or check that what is here is the same job (then we resume)."""
        existing = self.read_job()
        if existing is not None:
            if existing.get("identity") != job_record["identity"]:
                raise OutputError(
                    f"{self.url} already holds a different job ({existing.get('name')!r}, planned "
                    f"{existing.get('planned')} samples) whose model, sampler, prompts, seed, decoder "
                    "or output format differ from this spec; choose another output.url"
                )
            return
        self.fs.makedirs(self.root, exist_ok=True)
        self.write_plan(plan)
        write_json(self.fs, self.path(JOB_FILE), job_record)

    def write_plan(self, plan: Plan) -> None:
        shard_of = [s.index // plan.samples_per_shard for s in plan.samples]
        table = pa.table(
            {
                "key": [s.key for s in plan.samples],
                "prompt": [s.prompt for s in plan.samples],
                "seed": pa.array([s.seed for s in plan.samples], pa.int64()),
                "shard": pa.array(shard_of, pa.int32()),
            }
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        write_atomic(self.fs, self.path(PLAN_FILE), buffer.getvalue())

    def read_planned_keys(self) -> list[str]:
        with self.fs.open(self.path(PLAN_FILE), "rb") as f:
            return pq.read_table(f, columns=["key"]).column("key").to_pylist()

    # -- shards --------------------------------------------------------------------------------

    def list_shard_files(self) -> list[str]:
        directory = self.path(SHARD_DIR)
        if not self.fs.exists(directory):
            return []
        return [posixpath.basename(p) for p in self.fs.ls(directory, detail=False)]

    def committed_markers(self) -> dict[str, dict]:
        """name -> marker, for every shard whose commit marker exists. Lists the shard folder once."""
        names = sorted(f[: -len(MARKER_SUFFIX)] for f in self.list_shard_files() if f.endswith(MARKER_SUFFIX))
        return {name: read_json(self.fs, self.shard_paths(name)["marker"]) for name in names}

    def remove_debris(self, committed: set[str]) -> list[str]:
        """Delete what an interrupted write left: anything but the three files of a committed shard."""
        keep = {posixpath.basename(p) for name in committed for p in self.shard_paths(name).values()}
        removed = []
        for filename in self.list_shard_files():
            if filename not in keep:
                self.fs.rm(self.path(SHARD_DIR, filename))
                removed.append(filename)
        return removed

    def write_index(self, markers: dict[str, dict]) -> None:
        shards = [
            {
                "name": name,
                "tar": f"{SHARD_DIR}/{name}.tar",
                "manifest": f"{SHARD_DIR}/{name}.parquet",
                "samples": m["samples"],
                "failed": m.get("failed", 0),
            }
            for name, m in sorted(markers.items())
        ]
        index = {
            "format_version": FORMAT_VERSION,
            "shards": shards,
            "samples": sum(s["samples"] for s in shards),
        }
        write_json(self.fs, self.path(INDEX_FILE), index)

    def read_index(self) -> dict:
        path = self.path(INDEX_FILE)
        if not self.fs.exists(path):
            return {"format_version": FORMAT_VERSION, "shards": [], "samples": 0}
        return read_json(self.fs, path)

    def tar_urls(self) -> list[str]:
        """Full URLs of committed shards, for webdataset or ray.data.read_webdataset."""
        base = self.url.rstrip("/")
        return [f"{base}/{s['tar']}" for s in self.read_index()["shards"]]

    def write_run_report(self, run_id: str, report: dict) -> None:
        write_json(self.fs, self.path("runs", f"{run_id}.json"), report)
