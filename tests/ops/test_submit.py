"""`latentmill submit/status/logs/stop/jobs` against a real Ray head (`ray start --head` with its
dashboard and Jobs server on 127.0.0.1, token authentication on), started for this module."""

from __future__ import annotations

import json
import socket
import time

import pytest

from jobs.cli import main as cli_main
from jobs.ops.submit import next_attempt, submission_base
from pipelines.readers import webdataset
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.lease import OutputLease
from pipelines.verify import verify_output
from tests.conftest import REPO
from tests.support.slowness import slack

QUICKSTART = f"{REPO}/jobs/examples/quickstart.yaml"
# The quickstart, shrunk to seconds: 64x64, 2 steps.
SMALL = ["--set", "sampler.steps=2", "--set", "sampler.height=64", "--set", "sampler.width=64",
         "--set", "output.samples_per_shard=4", "--set", "stages.denoise.batch_size=4",
         "--set", "stages.decode.batch_size=4"]
DATE = "2026-11-20"


@pytest.fixture(scope="module")
def ray_head(cache_dir):
    from infra.local_ray import LocalRayHead

    # The cluster runs this checkout's code, as a cluster built from infra/docker runs the installed one.
    head = LocalRayHead(num_cpus=2, env={"PYTHONPATH": REPO})
    yield head
    head.close()


@pytest.fixture
def cluster(ray_head, monkeypatch):
    """The head, with this process holding its token as a user's shell would (RAY_AUTH_TOKEN)."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.token)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return ray_head


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli_main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def wait_for(capsys, address: str, submission_id: str, statuses: tuple[str, ...], timeout_s: float = 300) -> str:
    deadline = time.monotonic() + slack(timeout_s)
    while time.monotonic() < deadline:
        code, out, err = cli(capsys, "status", submission_id, "--address", address)
        assert code == 0, err
        status = out.splitlines()[0].split(": ")[1]
        if status in statuses:
            return status
        if status in ("FAILED", "STOPPED", "SUCCEEDED"):
            _, logs, _ = cli(capsys, "logs", submission_id, "--address", address)
            pytest.fail(f"{submission_id} ended {status}, expected {statuses}:\n{out}\n{logs[-3000:]}")
        time.sleep(1.0)
    pytest.fail(f"{submission_id} not {statuses} within {timeout_s} s")


def test_submit_stop_resubmit_logs_verify_and_a_finished_job_is_recognised(cluster, tmp_path, capsys, monkeypatch):
    out = tmp_path / "long"
    prompts = tmp_path / "prompts.txt"  # a local file: shipped with the job
    prompts.write_text("a cat on a mat\na dog in fog\n")
    args = [QUICKSTART, "--set", f"output.url={out}", "--set", "name=long-job",
            "--set", "prompts.inline=null", "--set", f"prompts.file={prompts}", "--set", "num_images=48", *SMALL,
            # Slower batches (~0.5 s each) so that the stop lands mid-run: at 2 steps, with 10 of the
            # 12 shards in flight at once, all of them committed within 0.2 s of the first.
            "--set", "sampler.steps=100", "--date", DATE]
    code, stdout, err = cli(capsys, "submit", *args, "--address", cluster.address)
    assert code == 0, err
    first = stdout.strip()
    assert first == f"latentmill-long-job-{DATE}"
    shards = out / "shards"
    deadline = time.monotonic() + slack(300)
    while not list(shards.glob("*.done.json")) and time.monotonic() < deadline:
        time.sleep(0.3)
    code, stdout, err = cli(capsys, "stop", first, "--address", cluster.address)
    assert code == 0 and stdout.strip() == f"{first}: STOPPED", err
    # The stopped driver (SIGTERM from Ray's Jobs API) lets go of its output lease as it exits, so
    # the new attempt need not wait for it to expire.
    deadline = time.monotonic() + slack(10)
    lease = OutputLease(OutputLayout(str(out)), "probe", 1)
    while not (lease.current()[1] or {}).get("released"):
        assert time.monotonic() < deadline, "the stopped driver did not release its output lease"
        time.sleep(0.2)
    before = {p.name: p.read_bytes() for p in shards.glob("*.done.json")}
    assert 1 <= len(before) < 12, "the job was stopped mid-run"

    code, stdout, err = cli(capsys, "submit", *args, "--address", cluster.address)
    assert code == 0, err
    second = stdout.strip()
    assert second == f"{first}-r2"
    assert wait_for(capsys, cluster.address, second, ("SUCCEEDED",)) == "SUCCEEDED"
    assert cli(capsys, "verify", str(out))[0] == 0
    result = verify_output(str(out))
    assert result["ok"] and result["samples"] == 48, result
    # Shards committed before the stop were kept as they were, not generated again.
    assert {name: (shards / name).read_bytes() for name in before} == before
    runs = sorted((json.loads(p.read_text()) for p in (out / "runs").glob("*.json")), key=lambda r: r["started"])
    assert runs[-1]["already_committed"] >= 4 * len(before)
    assert runs[-1]["generated"] == 48 - runs[-1]["already_committed"]
    code, logs, _ = cli(capsys, "logs", second, "--address", cluster.address)
    assert code == 0
    assert f"latentmill run spec.yaml --date {DATE}" in logs
    assert f"long-job: {runs[-1]['generated']} images generated" in logs
    # The shipped prompt file is what the samples were made from.
    code, status_text, _ = cli(capsys, "status", second, "--address", cluster.address)
    assert "job long-job, date 2026-11-20" in status_text
    assert {s["txt"].decode() for s in webdataset(str(out))} == {"a cat on a mat", "a dog in fog"}

    # The address from RAY_ADDRESS; the same job and date again: recognised, nothing submitted.
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    code, stdout, err = cli(capsys, "submit", *args)
    assert code == 0 and stdout.strip() == second
    assert "already submitted" in err and "SUCCEEDED" in err
    code, listing, _ = cli(capsys, "jobs")
    status_of = {line.split()[0]: line.split()[1] for line in listing.splitlines() if "long-job" in line}
    assert code == 0 and status_of == {first: "STOPPED", second: "SUCCEEDED"}, listing


def test_unknown_job_id_is_a_clear_error(cluster, capsys):
    for command in ("status", "logs", "stop"):
        code, _, err = cli(capsys, command, "latentmill-nope-2026-01-01", "--address", cluster.address)
        assert code == 2
        assert "no job 'latentmill-nope-2026-01-01'" in err and "latentmill jobs" in err


def test_a_wrong_token_is_a_clear_error(cluster, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
    code, _, err = cli(capsys, "jobs", "--address", cluster.address)
    assert code == 2 and "token" in err and "RAY_AUTH_TOKEN" in err
    assert "0" * 64 not in err


# -- without a cluster ------------------------------------------------------------------------------


def test_unreachable_addresses_fail_clearly_within_30_s(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}"
    # A server that accepts connections and never answers: the request must time out, not hang.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        for address in (refused, f"http://127.0.0.1:{silent.getsockname()[1]}"):
            started = time.monotonic()
            code, _, err = cli(capsys, "submit", QUICKSTART, "--address", address, "--set",
                               f"output.url={tmp_path}/o")
            assert time.monotonic() - started < 30
            assert code == 2 and f"cannot reach the Ray cluster at {address}" in err
    finally:
        silent.close()
    code, _, err = cli(capsys, "jobs")
    assert code == 2 and "--address" in err and "RAY_ADDRESS" in err


def test_bad_submissions_are_refused_before_contacting_the_cluster(capsys, tmp_path):
    address = "http://127.0.0.1:9"  # nothing listens: these must fail on the spec first
    code, _, err = cli(capsys, "submit", QUICKSTART, "--address", address, "--set", f"output.url={tmp_path}/o",
                       "--set", "prompts.inline=null", "--set", f"prompts.file={tmp_path}/missing.txt")
    assert code == 2 and "prompts.file" in err and "missing.txt" in err and "does not exist" in err
    code, _, err = cli(capsys, "submit", QUICKSTART, "--address", address, "--set", f"output.url={tmp_path}/o/{{date}}",
                       "--date", "2026-02-30")
    assert code == 2 and "--date '2026-02-30'" in err and "YYYY-MM-DD" in err
    code, _, err = cli(capsys, "submit", QUICKSTART, "--address", address)  # the example's relative output
    assert code == 2 and "output.url" in err and "relative path" in err


def test_attempt_ids_recognise_retries():
    base = submission_base("Nightly SDXL_v2", DATE)
    assert base == f"latentmill-nightly-sdxl-v2-{DATE}"
    assert next_attempt(base, {}, again=False) == (base, True)
    assert next_attempt(base, {base: "RUNNING"}, again=False) == (base, False)
    assert next_attempt(base, {base: "PENDING"}, again=True) == (base, False)
    assert next_attempt(base, {base: "SUCCEEDED"}, again=False) == (base, False)
    assert next_attempt(base, {base: "SUCCEEDED"}, again=True) == (f"{base}-r2", True)
    assert next_attempt(base, {base: "STOPPED", f"{base}-r2": "FAILED"}, again=False) == (f"{base}-r3", True)
    assert next_attempt(base, {base: "FAILED", f"{base}-r2": "RUNNING", "other": "FAILED"}, False) == (f"{base}-r2", False)
    # Another job whose name extends this one's is not an attempt of it.
    assert next_attempt(base, {f"{base}-extra": "RUNNING"}, again=False) == (base, True)


def test_a_job_runs_on_a_head_started_from_the_venv_by_absolute_path(cache_dir, tmp_path, capsys, monkeypatch):
    """`/venv/bin/ray start` with the venv's bin/ not on PATH: no `latentmill` there (the job used to
    fail with exit 127, `latentmill: not found`); the entrypoint finds the Python that runs Ray."""
    import os
    import shutil
    import sys

    from infra.local_ray import LocalRayHead

    venv_bin = os.path.dirname(sys.executable)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    assert shutil.which("latentmill", path=path) is None, "the test needs a PATH without latentmill"
    head = LocalRayHead(num_cpus=2, env={"PYTHONPATH": REPO}, venv_on_path=False)
    try:
        monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        out = tmp_path / "out"
        code, stdout, err = cli(capsys, "submit", QUICKSTART, "--set", f"output.url={out}", "--set", "num_images=4",
                                *SMALL, "--date", DATE, "--address", head.address)
        assert code == 0, err
        submission = stdout.strip()
        assert wait_for(capsys, head.address, submission, ("SUCCEEDED",)) == "SUCCEEDED"
        assert verify_output(str(out))["ok"]
    finally:
        head.close()
