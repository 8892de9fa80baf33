"""Nightly dated builds: `{date}` in URLs, a latest.json pointer, retention, and a webhook summary.

    output.url: s3://bucket/nightly/{date}       one output per run date (UTC today, or --date)
      s3://bucket/nightly/2026-11-20/...         complete, verified
      s3://bucket/nightly/2026-11-21/...         this run
      s3://bucket/nightly/latest.json            -> 2026-11-21, replaced only after it verifies

A rerun for the same date resumes that date's output (a no-op when it is complete). Retention
deletes an older dated output only when it is a complete latentmill output of the same job and
holds nothing but latentmill's own files; anything else under the prefix is never touched.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import posixpath
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from jobs.dates import DATE_FORMAT, LATEST_FILE, DatedOutputs
from pipelines.errors import LatentmillError, OutputError

# -- after a run ------------------------------------------------------------------------------


class NotVerified(OutputError):
    """A dated output did not verify after its run: nothing was published or deleted."""


def run_with_upkeep(spec, run: Callable[[], dict]) -> dict:
    """Run the job; for a dated output then verify it, move latest.json and apply retention.

    With notify set, a JSON summary is posted whatever happens; the run's own error is re-raised.
    Returns the run report with a `nightly` entry (the summary).
    """
    run_date, notify = spec.run_date, spec.notify  # a dated kind's spec (jobs/kinds/base.py: JobKind.dated)
    dated = run_date is not None and run_date.output_template is not None
    summary: dict = {"job": spec.name, "date": run_date.date if run_date else None,
                     "output_url": _public_url(spec.output.url), "status": "failed", "error": None}
    try:
        report = run()
        summary.update(_run_counts(report))
        if dated:
            summary.update(_verify_and_publish(spec))
        summary["status"] = "succeeded" if not report.get("failed") else "failed"
    except BaseException as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if notify is not None:
            post_summary(notify, summary)
    return {**report, "nightly": summary}


def _verify_and_publish(spec) -> dict:
    # lazy: keeps pyarrow, PIL, numpy out of processes that never call this
    from pipelines.verify import verify_output

    result = verify_output(spec.output.url, spec.output.storage)
    counts = {k: result[k] for k in ("planned", "samples", "missing", "duplicates", "failed")}
    if not result["ok"]:
        raise NotVerified(
            f"{spec.output.url} did not verify ({result['samples']}/{result['planned']} samples, "
            f"{result['failed']} failed, {result['missing']} missing); latest.json unchanged, nothing deleted"
        )
    return {**counts, **_publish(spec, result)}


def _run_counts(report: dict) -> dict:
    keys = ("generated", "already_committed", "failed", "samples_per_s", "wall_s", "gpu_hours", "cpu_hours", "cost")
    return {k: report.get(k) for k in keys}


def _publish(spec, result: dict) -> dict:
    # lazy: keeps pyarrow, PIL out of processes that never call this
    from pipelines.sinks.storage import open_output, write_json

    outputs = DatedOutputs(spec.run_date.output_template)
    fs, root_path = open_output(outputs.root, spec.output.storage)
    latest = _latest_date(fs, f"{root_path}/{LATEST_FILE}")
    if latest is not None and latest > spec.run_date.date:  # a backfill: latest.json stays on the newer date
        print(f"latest.json stays on {latest}: this run's date {spec.run_date.date} is older", file=sys.stderr)
    else:
        write_json(fs, f"{root_path}/{LATEST_FILE}", {
            "job": spec.name,
            "date": spec.run_date.date,
            "url": spec.output.url,
            "samples": result["samples"],
            "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        })  # atomic: readers see the previous pointer or this one
    removed, kept = [], []
    if spec.output.retention is not None:
        removed, kept = apply_retention(spec, outputs, fs, root_path)
    return {"latest": _public_url(outputs.latest_url()), "removed": removed, "kept": kept}


def _latest_date(fs, path: str) -> str | None:
    """The date latest.json points to; None when there is none (or it is unreadable: it is rewritten)."""
    try:
        date = json.loads(fs.cat_file(path)).get("date")
    except (FileNotFoundError, ValueError, AttributeError):
        return None
    return date if isinstance(date, str) and DATE_FORMAT.match(date) else None


def apply_retention(spec, outputs: DatedOutputs, fs, root_path: str) -> tuple[list[str], list[str]]:
    """Delete dated outputs older than this run's date beyond the newest `keep` (this one included).

    Returns (removed urls, urls kept although old, with why). A candidate is deleted only if its
    latentmill.json names this job, it verifies, and it holds only latentmill's files.
    """
    # lazy: keeps pyarrow, PIL, numpy out of processes that never call this
    from pipelines.verify import verify_output

    today = spec.run_date.date
    others = [d for d in outputs.dates(fs, root_path) if d != today]
    newest = sorted([*others, today], reverse=True)[: spec.output.retention.keep]
    removed, kept = [], []
    for date in sorted(d for d in others if d < today and d not in newest):
        url = outputs.url(date)
        why = _not_removable(spec, url, fs, verify_output)
        if why:
            kept.append(f"{_public_url(url)} ({why})")
            print(f"retention: keeping {_public_url(url)}: {why}", file=sys.stderr)
            continue
        fs.rm(_path_of(url, root_path, outputs), recursive=True)
        removed.append(_public_url(url))
    return removed, kept


def _not_removable(spec, url: str, fs, verify_output) -> str | None:
    # lazy: keeps pyarrow, PIL out of processes that never call this
    from pipelines.sinks.layout import OutputLayout

    try:
        layout = OutputLayout(url, spec.output.storage)
        job = layout.read_job()
        if job is None:
            return "not a latentmill output"
        if job.get("name") != spec.name:
            return f"holds another job ({job.get('name')!r})"
        result = verify_output(url, spec.output.storage)
        if not result["ok"]:
            return "incomplete or not verified"
        foreign = [p for p in layout.fs.find(layout.root) if not _is_latentmill_file(posixpath.relpath(p, layout.root))]
        if foreign:
            return f"holds files latentmill did not write ({posixpath.basename(foreign[0])})"
    except (LatentmillError, OSError) as exc:
        return f"could not be checked: {type(exc).__name__}: {exc}"
    return None


def _is_latentmill_file(relpath: str) -> bool:
    """A file a latentmill job writes under its output (see pipelines/sinks/layout.py)."""
    # lazy: keeps pyarrow, PIL out of processes that never call this
    from pipelines.observe.report import REPORT_JSON, REPORT_MD, REPORT_PNG, RUNS_DIR
    from pipelines.sinks.layout import MARKER_SUFFIX, SHARD_DIR, TOP_FILES
    from pipelines.sinks.lease import LEASE_DIR

    if relpath in (*TOP_FILES, REPORT_JSON, REPORT_MD, REPORT_PNG):
        return True
    # A shard's tar and manifest (repairs add a revision: 00000.r1.tar), its marker; the lease.
    shard = rf"{SHARD_DIR}/\d+((\.r\d+)?(\.tar|\.parquet)|{re.escape(MARKER_SUFFIX)})"
    return bool(re.fullmatch(shard, relpath) or re.fullmatch(rf"{RUNS_DIR}/[\w.-]+\.json", relpath)
                or re.fullmatch(rf"{LEASE_DIR}/\d+\.json", relpath))


def _path_of(url: str, root_path: str, outputs: DatedOutputs) -> str:
    """The filesystem path of a dated output URL (same filesystem as the root)."""
    return root_path + url[len(outputs.root):]


# -- the webhook ------------------------------------------------------------------------------


def post_summary(notify, summary: dict) -> bool:
    """POST the summary as JSON within notify.timeout_s. A failed delivery warns; it never fails the job."""
    url = notify.webhook if notify.webhook is not None else os.environ.get(notify.webhook_env)
    if not url:
        print(f"warning: notify.webhook_env {notify.webhook_env!r} is not set; no summary sent", file=sys.stderr)
        return False
    body = json.dumps({"event": "latentmill.run", **summary}, sort_keys=True, default=str).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=notify.timeout_s) as response:
            response.read(1024)
        return True
    except (urllib.error.URLError, OSError, ValueError) as exc:
        # The URL may hold a token: name only its host.
        host = urllib.parse.urlsplit(url).netloc.rpartition("@")[2]
        print(f"warning: webhook to {host} failed: {type(exc).__name__}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return False


def _public_url(url: str) -> str:
    """The URL without any user:password part."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
