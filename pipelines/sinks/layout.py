"""Where everything of a job lives under its output URL, and what counts as committed.

    OUTPUT/
      latentmill.json          job identity (what decides the samples), planned counts, spec
      plan.parquet             every planned sample: key, prompt, seed, shard
      index.json               committed shards; loaders read this instead of listing a bucket
                               (rewritten on a timer during a run: pipelines/sinks/shard_index.py)
      wids.json                the same shards for webdataset's indexed reader, wids.ShardListDataset
      shards/NNNNN.tar         webdataset shard (NNNNN.rK.tar after its K-th repair)
      shards/NNNNN.parquet     its manifest, one row per sample (failed samples included)
      shards/NNNNN.done.json   commit marker, written last: a shard exists only once this does,
                               and it names the shard's tar and manifest, with their sizes and sha256
      runs/RUN_ID.json         one report per run of the job
      _lease/                  who is writing the output now (pipelines/sinks/lease.py)

The marker is the truth; index.json is rebuilt from the markers at the start of every run, so a
driver killed between the two loses nothing.
"""

from __future__ import annotations

import json
import posixpath
from typing import Callable, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import StorageConfig
from pipelines.errors import OutputConflict
from pipelines.plan import Plan
from pipelines.sinks.lease import LEASE_DIR
from pipelines.sinks.storage import (
    check_reachable,
    open_output,
    read_json,
    read_table,
    retrying,
    streaming_writer,
    write_json,
)

JOB_FILE = "latentmill.json"
PLAN_FILE = "plan.parquet"
INDEX_FILE = "index.json"
WIDS_FILE = "wids.json"
SHARD_DIR = "shards"
# The files a job writes at the top of its output (shards/, runs/ and the lease folder hold the rest).
TOP_FILES = (JOB_FILE, PLAN_FILE, INDEX_FILE, WIDS_FILE)
MARKER_SUFFIX = ".done.json"
FORMAT_VERSION = 1
# What every commit marker holds (pipelines/sinks/webdataset_writer.py writes more).
MARKER_FIELDS = {"samples": int, "tar_bytes": int, "tar_sha256": str}
PLAN_ROWS_PER_GROUP = 8192  # also bounds the memory writing the plan takes

T = TypeVar("T")


class InvalidJobRecord(OutputConflict):
    """latentmill.json cannot be read: the output's job is unknown, so nothing may be added to it."""

    def __init__(self, url: str, why: str):
        super().__init__(
            f"{url.rstrip('/')}/{JOB_FILE}, the job record that says which job this output holds, {why}; without it "
            "the output cannot be resumed or verified. Restore the file from a copy, or run the spec with "
            "--set output.mode=overwrite to delete this output and generate it again, or choose another output.url")


def shard_files(name: str, revision: int = 0) -> dict[str, str]:
    """File names (under shards/) of a shard's tar and manifest; repairs write new names."""
    stem = name if revision == 0 else f"{name}.r{revision}"
    return {"tar": f"{stem}.tar", "manifest": f"{stem}.parquet"}


class OutputLayout:
    def __init__(self, url: str, storage: StorageConfig | None = None):
        self.url = url
        self.timeout_s = storage.timeout_s if storage else StorageConfig().timeout_s
        self.fs, self.root = open_output(url, storage)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def shard_paths(self, name: str) -> dict[str, str]:
        base = self.path(SHARD_DIR, name)
        return {"tar": base + ".tar", "manifest": base + ".parquet", "marker": base + MARKER_SUFFIX}

    def committed_paths(self, name: str, marker: dict) -> dict[str, str]:
        """Paths of the tar and manifest a commit marker names (markers before revisions name none)."""
        return {kind: self.path(SHARD_DIR, filename) for kind, filename in committed_files(name, marker).items()}

    def retrying(self, what: str, operation: Callable[[], T]) -> T:
        return retrying(f"{what} ({self.url})", operation, self.timeout_s)

    def check_reachable(self) -> None:
        check_reachable(self.url, self.fs, self.root, self.timeout_s)

    def _exists(self, path: str) -> bool:
        return self.retrying(f"checking {posixpath.basename(path)}", lambda: self.fs.exists(path))

    def _listing(self, path: str) -> list[str]:
        def ls():
            try:
                return [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False, refresh=True)]
            except FileNotFoundError:
                return []

        return self.retrying(f"listing {path}", ls)

    # -- the job -------------------------------------------------------------------------------

    def read_job(self) -> dict | None:
        """The job record, or None where there is none; InvalidJobRecord (exit 2) where it is damaged."""
        path = self.path(JOB_FILE)
        if not self._exists(path):
            return None
        data = self.retrying("reading the job record", lambda: self.fs.cat_file(path))
        try:
            record = json.loads(data)
        except ValueError as exc:
            raise InvalidJobRecord(self.url, f"is not valid JSON ({len(data)} bytes; {exc})") from None
        if not isinstance(record, dict):
            raise InvalidJobRecord(self.url, f"holds a JSON {type(record).__name__}, not a job record's mapping")
        return record

    def claim(self, job_record: dict, plan: Plan, mode: str) -> str:
        """Make this output this job's, per `mode`; returns what happened: new, resume, extend or overwrite."""
        try:
            existing = self.read_job()
        except InvalidJobRecord:
            if mode != "overwrite":
                raise
            existing = {}  # what the output held cannot be known: mode overwrite deletes it
        if existing is None:
            self.refuse_foreign_data()
            outcome = "new"
        elif existing.get("identity") == job_record["identity"]:
            if not self._exists(self.path(PLAN_FILE)):  # killed between the job record and the plan
                self.write_plan(plan)
            return "resume"
        elif mode == "overwrite":
            self._remove_all_but_the_lease()
            outcome = "overwrite"
        elif mode == "extend":
            self._check_extends(existing, job_record, plan)
            outcome = "extend"
        else:
            raise OutputConflict(
                f"{self.url} already holds a different job ({existing.get('name')!r}, planned "
                f"{existing.get('planned')} samples); what differs from this spec: "
                f"{identity_changes(existing.get('identity', {}), job_record['identity'])}. "
                + _remedies(existing.get("identity", {}), job_record["identity"])
            )
        # The job record first: a run killed before the plan is written finds its job and writes it.
        self.retrying("writing the job record", lambda: write_json(self.fs, self.path(JOB_FILE), job_record))
        self.write_plan(plan)
        return outcome

    def refuse_foreign_data(self) -> None:
        """Refuse a prefix holding files that are not a latentmill job (checked before the lease is
        taken too, so that a refused run leaves no lease behind in someone else's folder)."""
        try:
            if self.read_job() is not None:
                return
        except InvalidJobRecord:
            return  # a latentmill output, damaged: claim() refuses it unless output.mode is overwrite
        ours = (*TOP_FILES, SHARD_DIR, LEASE_DIR)
        foreign = [f for f in self._listing(self.root) if f.split(".tmp-")[0] not in ours]
        if foreign:
            raise OutputConflict(
                f"{self.url} holds data that is not a latentmill job ({', '.join(sorted(foreign)[:5])}); "
                "choose an empty output.url"
            )

    def _remove_all_but_the_lease(self) -> None:
        for name in self._listing(self.root):
            if name != LEASE_DIR:
                self.retrying(f"removing {name} of the previous job", lambda name=name: self.fs.rm(self.path(name), recursive=True))

    def _check_extends(self, existing: dict, job_record: dict, plan: Plan) -> None:
        old, new = dict(existing["identity"]), dict(job_record["identity"])
        old.pop("plan_sha256", None), new.pop("plan_sha256", None)
        if old != new:
            raise OutputConflict(
                f"{self.url}: output.mode extend needs the same model, sampler, seed, decoder, weights and output "
                f"format as the job already there; only prompts and num_images may grow (what differs: "
                f"{identity_changes(old, new)})"
            )
        table = self.read_plan_table()
        if table.num_rows > len(plan):
            raise OutputConflict(f"{self.url}: cannot extend a job of {table.num_rows} samples to {len(plan)}")
        for i, (key, prompt, seed) in enumerate(zip(*(table.column(c).to_pylist() for c in ("key", "prompt", "seed")))):
            sample = plan.sample(i)
            if (key, prompt, seed) != (sample.key, sample.prompt, sample.seed):
                raise OutputConflict(
                    f"{self.url}: cannot extend: planned sample {key} would change (prompt or seed differ); "
                    "extend only appends samples"
                )
        # A last shard that was partial gets more samples in the new plan: it is generated again.
        for name, marker in self.committed_markers().items():
            index = int(name)
            if index >= plan.num_shards or marker["samples"] + marker.get("failed", 0) != plan.shard_size(index):
                self.uncommit(name)

    def check_devices(self, devices: dict[str, list[str]]) -> None:
        """Record the device kinds the stages run on; refuse to add to an output made on others."""
        record = self.read_job()
        recorded = record.get("devices")
        if recorded is None:
            record["devices"] = devices
            self.retrying("writing the job record", lambda: write_json(self.fs, self.path(JOB_FILE), record))
        elif recorded != devices:
            raise OutputConflict(
                f"{self.url} was generated on {_devices_text(recorded)} and this run's stages run on "
                f"{_devices_text(devices)}: the same seeds give different pixels on another device kind, so "
                "the output would mix them. Run on the same kind of device, or write to another output.url"
            )

    def write_plan(self, plan) -> None:
        """plan.parquet: one row per planned sample (columns chosen by the plan), written in row groups."""

        def write():
            with streaming_writer(self.fs, self.path(PLAN_FILE)) as f:
                first = plan.table(0, PLAN_ROWS_PER_GROUP)
                with pq.ParquetWriter(f, first.schema) as writer:
                    writer.write_table(first)
                    for start in range(PLAN_ROWS_PER_GROUP, len(plan), PLAN_ROWS_PER_GROUP):
                        writer.write_table(plan.table(start, start + PLAN_ROWS_PER_GROUP))

        self.retrying("writing the plan", write)

    def read_plan_table(self, columns=("key", "prompt", "seed")) -> pa.Table:
        return self.retrying("reading the plan", lambda: read_table(self.fs, self.path(PLAN_FILE), columns))

    # -- shards --------------------------------------------------------------------------------

    def committed_markers(self) -> dict[str, dict]:
        """name -> marker, for every shard whose commit marker exists and is whole. Lists the shard folder once."""
        return self.read_markers()[0]

    def read_markers(self) -> tuple[dict[str, dict], dict[str, str]]:
        """(name -> marker of every committed shard, name -> why for every marker that is not one).

        A marker that is truncated or not a marker (a torn copy, an edit) commits nothing: its
        shard is generated again by the next run, whose debris sweep removes the bad file."""
        names = sorted(f[: -len(MARKER_SUFFIX)] for f in self._listing(self.path(SHARD_DIR)) if f.endswith(MARKER_SUFFIX))
        markers, invalid = {}, {}
        for name in names:
            path = self.shard_paths(name)["marker"]
            data = self.retrying(f"reading marker {name}", lambda path=path: self.fs.cat_file(path))
            marker, why = parse_marker(data)
            if why:
                invalid[name] = why
            else:
                markers[name] = marker
        return markers, invalid

    def uncommit(self, name: str) -> None:
        self.retrying(f"uncommitting shard {name}", lambda: self.fs.rm(self.shard_paths(name)["marker"]))

    def shard_sizes(self) -> dict[str, int]:
        """filename -> size of everything in shards/, from one listing."""

        def ls():
            try:
                entries = self.fs.ls(self.path(SHARD_DIR), detail=True, refresh=True)
            except FileNotFoundError:
                return {}
            return {posixpath.basename(e["name"].rstrip("/")): e.get("size") for e in entries}

        return self.retrying("listing the shards", ls)

    def remove_debris(self, markers: dict[str, dict]) -> list[str]:
        """Delete what interrupted writes and finished repairs left: anything in shards/ that is
        not a commit marker or a file a marker names. Only the lease holder may call this."""
        keep = {f"{name}{MARKER_SUFFIX}" for name in markers}
        keep |= {filename for name, marker in markers.items() for filename in committed_files(name, marker).values()}
        removed = [f for f in self._listing(self.path(SHARD_DIR)) if f not in keep]
        for filename in removed:
            self.retrying(f"removing {filename}", lambda filename=filename: self.fs.rm(self.path(SHARD_DIR, filename)))
        return removed

    def read_index(self) -> dict:
        path = self.path(INDEX_FILE)
        if not self._exists(path):
            return {"format_version": FORMAT_VERSION, "shards": [], "samples": 0, "failed": 0}
        return self.retrying("reading index.json", lambda: read_json(self.fs, path))

    def tar_urls(self) -> list[str]:
        """Full URLs of committed shards, for webdataset or ray.data.read_webdataset."""
        base = self.url.rstrip("/")
        return [f"{base}/{s['tar']}" for s in self.read_index()["shards"]]

    def write_run_report(self, run_id: str, report: dict) -> None:
        path = self.path("runs", f"{run_id}.json")
        self.retrying("writing the run report", lambda: write_json(self.fs, path, report))


def parse_marker(data: bytes) -> tuple[dict | None, str | None]:
    """(marker, None) for a whole commit marker, else (None, why it is not one)."""
    try:
        marker = json.loads(data)
    except ValueError as exc:  # also UnicodeDecodeError
        return None, f"not valid JSON ({len(data)} bytes; {exc})"
    if not isinstance(marker, dict):
        return None, f"holds a JSON {type(marker).__name__}, not a commit marker's mapping"
    for field, kind in MARKER_FIELDS.items():
        if not isinstance(marker.get(field), kind) or isinstance(marker.get(field), bool):
            return None, f"has no valid {field!r} field"
    if marker.get("failed") and not isinstance(marker.get("failed_keys"), list):
        return None, "counts failed samples but lists no failed_keys"
    return marker, None


def committed_files(name: str, marker: dict) -> dict[str, str]:
    default = shard_files(name)
    return {kind: marker.get(kind, default[kind]) for kind in ("tar", "manifest")}


def identity_changes(old: dict, new: dict, prefix: str = "") -> str:
    """The identity fields that differ, e.g. 'weights.model (a8f3.. -> 91c2..), seed (7 -> 8)'."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changes.append(identity_changes(a, b, f"{prefix}{key}."))
        else:
            changes.append(f"{prefix}{key} ({_short(a)} -> {_short(b)})")
    return ", ".join(changes)


def _remedies(old: dict, new: dict) -> str:
    """Only what would be accepted: extend only where nothing but the plan differs (_check_extends)."""
    if {k: v for k, v in old.items() if k != "plan_sha256"} == {k: v for k, v in new.items() if k != "plan_sha256"}:
        return ("Choose another output.url, or set output.mode to overwrite (delete it) or extend (add samples "
                "to it, if this spec only adds prompts or images)")
    weights = " (or restore the weights it was made with)" if old.get("weights") != new.get("weights") else ""
    return f"Choose another output.url, or set output.mode to overwrite (delete it){weights}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _devices_text(devices: dict[str, list[str]]) -> str:
    return ", ".join(f"{stage}: {'/'.join(kinds)}" for stage, kinds in sorted(devices.items()))
