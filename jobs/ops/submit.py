"""Submit a job spec to a running Ray cluster through Ray's Jobs API, and watch, stop and list jobs.

The spec travels as a runtime-environment working_dir: the spec with `--set` overrides applied,
and the local files it names (prompts.file, a decoder checkpoint) under inputs/, their paths in
the spec rewritten to the shipped copies. On the cluster the entrypoint is `latentmill run
spec.yaml --date DATE`, so {date} templates resolve there exactly as they would here.

Submission ids are `latentmill-<job name>-<date>`, so a retried submission of the same job on
the same date is recognised: while one runs (or after it succeeded) nothing new is submitted and
its id is printed; after it failed or was stopped, the new attempt gets `-r2`, `-r3`, ... and
resumes from the shards already committed.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import fsspec
import yaml

import decoders
from decoders.references import is_path
from jobs.dates import PLACEHOLDER, parse_date
from jobs.ops.entrypoint import job_entrypoint
from pipelines.errors import ConfigError, LatentmillError

CONNECT_TIMEOUT_S = (5.0, 10.0)  # (connect, read): an unreachable address fails within seconds
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
ACTIVE = ("PENDING", "RUNNING")
SHIPPED_INPUTS = "inputs"
SPEC_FILE = "spec.yaml"
METADATA_JOB, METADATA_DATE = "latentmill_job", "latentmill_date"


class ClusterError(LatentmillError):
    """The cluster cannot be reached, or it refused or does not know what was asked: a wrong
    address, token or job id, so a usage error (exit 2), not a failed job."""

    exit_code = 2


def cluster_address(address: str | None) -> str:
    """The Jobs API address: --address, else RAY_ADDRESS; a bare host:port gets http://."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError("", "", detail="no cluster address: give --address http://HEAD:8265 or set RAY_ADDRESS")
    if "://" not in address:
        address = f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise ConfigError("", "", detail=f"--address {address!r}: expected the Ray dashboard URL, e.g. http://HEAD:8265")
    return address.rstrip("/")


def _auth_headers() -> dict[str, str]:
    """A Ray auth token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), as Ray's own
    clients find it, unless RAY_AUTH_MODE=disabled."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not token and path.is_file():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def connect(address: str | None):
    """A JobSubmissionClient for the cluster, or a clear error within CONNECT_TIMEOUT_S."""
    # lazy: keeps requests out of processes that never call this
    import requests

    url = cluster_address(address)
    headers = _auth_headers()
    try:
        response = requests.get(f"{url}/api/version", headers=headers, timeout=CONNECT_TIMEOUT_S)
    except requests.RequestException as exc:
        raise ClusterError(
            f"cannot reach the Ray cluster at {url} ({type(exc).__name__}); expected the Ray dashboard "
            "address of a running cluster (ray start --head / a KubeRay head service, port 8265)"
        ) from None
    if response.status_code in (401, 403):
        raise ClusterError(
            f"the Ray cluster at {url} refused the request ({response.status_code}): it uses token "
            "authentication; set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token"
        )
    if response.status_code != 200:
        raise ClusterError(f"{url} is not a Ray dashboard with the Jobs API (GET /api/version: {response.status_code})")
    # lazy: keeps ray out of processes that never call this
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(url, headers=headers)
    except Exception as exc:  # the SDK raises ConnectionError, RuntimeError or its auth error
        raise ClusterError(f"cannot use the Ray Jobs API at {url}: {exc}") from None


def job_info(client, submission_id: str):
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise ClusterError(
                f"no job {submission_id!r} on the cluster at {client.get_address()}; `latentmill jobs` lists them"
            ) from None
        raise ClusterError(f"asking for job {submission_id!r} failed: {exc}") from None


# -- submit -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    submission_id: str
    submitted: bool  # False: an attempt of this job and date is running or succeeded already
    status: str | None = None


def submission_base(name: str, date: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "job"
    return f"latentmill-{slug}-{date}"


def next_attempt(base: str, existing: dict[str, str], again: bool) -> tuple[str, bool]:
    """(id, submit?) from the statuses of earlier attempts of the same job and date (id -> status)."""
    pattern = re.compile(re.escape(base) + r"(?:-r(\d+))?$")
    attempts = sorted(((int(m.group(1) or 1), sid) for sid in existing if (m := pattern.match(sid))))
    if not attempts:
        return base, True
    number, latest = attempts[-1]
    status = existing[latest]
    if status in ACTIVE or (status == "SUCCEEDED" and not again):
        return latest, False
    return f"{base}-r{number + 1}", True


def submit(spec_path: str, *, address: str | None, overrides: list[str] = (), date: str | None = None,
           again: bool = False) -> Submission:
    # lazy: keeps pyarrow, PIL, numpy out of processes that never call this
    from jobs.spec import parse_spec, read_spec_text, spec_data

    date = parse_date(date)
    text = read_spec_text(spec_path)
    spec = parse_spec(text, source=spec_path, overrides=overrides, date=date)  # every check a run does here
    data, _ = spec_data(text, spec_path, overrides)
    check_output_for_cluster(spec.output.url)
    with tempfile.TemporaryDirectory(prefix="latentmill-submit-") as workdir:
        _ship_local_files(data, date, workdir)
        Path(workdir, SPEC_FILE).write_text(yaml.safe_dump(data, sort_keys=False))
        client = connect(address)
        existing = {j.submission_id: str(j.status) for j in client.list_jobs() if j.submission_id}
        submission_id, go = next_attempt(submission_base(spec.name, date), existing, again)
        if not go:
            return Submission(submission_id, False, existing[submission_id])
        try:
            client.submit_job(
                entrypoint=job_entrypoint(["run", SPEC_FILE, "--date", date]),
                submission_id=submission_id,
                # `stop` sends SIGTERM; the driver then lets shard writes finish and releases its
                # output lease. Ray's default 3 s before SIGKILL is too short for that.
                runtime_env={"working_dir": workdir, "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "60"}},
                metadata={METADATA_JOB: spec.name, METADATA_DATE: date},
            )
        except Exception as exc:  # the SDK raises RuntimeError with the server's answer
            raise ClusterError(f"submitting {submission_id} failed: {exc}") from None
    return Submission(submission_id, True, "PENDING")


def is_local(url: str) -> bool:
    return fsspec.core.split_protocol(url)[0] in (None, "file", "local")


def check_output_for_cluster(url: str) -> None:
    if is_local(url) and not posixpath.isabs(fsspec.core.split_protocol(url)[1]):
        raise ConfigError(
            "output.url", "", detail=f"{url!r} is a relative path: on a cluster give an object-store URL "
            "(s3://...) or an absolute path on storage every node mounts"
        )


def _ship_local_files(data: dict, date: str, workdir: str) -> None:
    """Copy local files the spec names into workdir/inputs and point the spec at the copies."""
    prompts = data.get("prompts")
    if isinstance(prompts, dict) and isinstance(prompts.get("file"), str):
        prompts["file"] = _ship(prompts["file"].replace(PLACEHOLDER, date), "prompts.file", workdir, dirs=False)
    decoder = data.get("decoder")
    if isinstance(decoder, str):
        if decoder not in decoders.available() and is_path(decoder):
            data["decoder"] = _ship(decoder, "decoder", workdir, dirs=True)


def _ship(value: str, field: str, workdir: str, dirs: bool) -> str:
    """The shipped relative path of a local file (or directory); remote URLs stay as they are."""
    if not is_local(value):
        return value  # read on the cluster, with the cluster's credentials
    source = Path(fsspec.core.split_protocol(value)[1]).expanduser()
    if not (source.is_file() or (dirs and source.is_dir())):
        raise ConfigError(field, "", detail=f"local file {str(source)!r} does not exist")
    target = Path(workdir, SHIPPED_INPUTS, source.name)
    target.parent.mkdir(exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)
    return f"{SHIPPED_INPUTS}/{source.name}"


# -- watch, stop, list ----------------------------------------------------------------------------


def status(address: str | None, submission_id: str):
    return job_info(connect(address), submission_id)


def logs(address: str | None, submission_id: str, follow: bool = False, out=None) -> None:
    out = out or sys.stdout
    client = connect(address)
    job_info(client, submission_id)  # a clear error for an unknown id
    if not follow:
        out.write(client.get_job_logs(submission_id))
        return

    async def tail():
        async for lines in client.tail_job_logs(submission_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())


def stop(address: str | None, submission_id: str, wait_s: float = 60.0) -> str:
    """Ask the job to stop and wait (bounded) until it has; returns its last status."""
    client = connect(address)
    info = job_info(client, submission_id)
    if str(info.status) in TERMINAL:
        return str(info.status)
    client.stop_job(submission_id)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        current = str(client.get_job_status(submission_id))
        if current in TERMINAL:
            return current
        time.sleep(0.5)
    return str(client.get_job_status(submission_id))


def list_jobs(address: str | None) -> list[dict]:
    rows = []
    for j in connect(address).list_jobs():
        if not j.submission_id:
            continue  # drivers connected by hand, not submitted jobs
        meta = j.metadata or {}
        rows.append({
            "id": j.submission_id,
            "status": str(j.status),
            "job": meta.get(METADATA_JOB, ""),
            "date": meta.get(METADATA_DATE, ""),
            "start_time": j.start_time or 0,
            "message": (j.message or "").splitlines()[0] if j.message else "",
        })
    return sorted(rows, key=lambda r: r["start_time"])


def describe(info) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.start_time / 1000)) if info.start_time else "-"
    ended = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.end_time / 1000)) if info.end_time else "-"
    meta = info.metadata or {}
    lines = [f"{info.submission_id}: {info.status}", f"  started {started} UTC, ended {ended} UTC"]
    if meta.get(METADATA_JOB):
        lines.append(f"  job {meta[METADATA_JOB]}, date {meta.get(METADATA_DATE, '-')}")
    if info.message:
        lines.append(f"  {info.message.strip()}")
    return "\n".join(lines)


# -- the command line -----------------------------------------------------------------------------


def _submit_command(args) -> int:
    result = submit(args.spec, address=args.address, overrides=args.overrides, date=args.date, again=args.again)
    if not result.submitted:
        print(f"already submitted: {result.submission_id} is {result.status} (nothing new submitted; "
              "--again submits anyway after a success)", file=sys.stderr)
    print(result.submission_id)
    return 0


def _status_command(args) -> int:
    print(describe(status(args.address, args.id)))
    return 0


def _logs_command(args) -> int:
    logs(args.address, args.id, follow=args.follow)
    return 0


def _stop_command(args) -> int:
    final = stop(args.address, args.id)
    print(f"{args.id}: {final}")
    return 0 if final in TERMINAL else 1


def _jobs_command(args) -> int:
    rows = list_jobs(args.address)
    if not rows:
        print("no submitted jobs")
    for r in rows:
        started = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["start_time"] / 1000)) if r["start_time"] else "-"
        print(f"{r['id']:<48} {r['status']:<10} {started} UTC  {r['job'] or '-'} {r['date']}  {r['message'][:60]}")
    return 0


COMMANDS = {"submit": _submit_command, "status": _status_command, "logs": _logs_command, "stop": _stop_command,
            "jobs": _jobs_command}
