"""Kill a job's processes with SIGKILL mid-run: its stage actors (Ray restarts them and retries
their calls; the job goes on), or its driver (a rerun refuses while the killed driver's output
lease lives, then takes it over and resumes). Either way the output is complete, and the two
outputs are byte-identical: a restarted actor's calls are retried with the same batches, and a
rerun makes the missing shards from the same plan (both were also measured byte-identical to an
uninterrupted run's, for every kind).

Parametrised by job kind: the engine's recovery is the same for every kind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from jobs.local import run_job
from jobs.spec import parse_spec
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.lease import LeaseHeld, OutputLease
from pipelines.verify import verify_output
from tests.conftest import s3_storage
from tests.support.jobspecs import SLOW_SAMPLES, kind_spec_dict
from tests.support.running import run_in_thread, wait_for_commit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def committed(spec) -> dict[str, str]:
    layout = OutputLayout(spec.output.url, spec.output.storage)
    return {name: m["tar_sha256"] for name, m in layout.committed_markers().items()}


def job_spec(kind, target, output, s3_server, photos) -> dict:
    # Slow enough (about 1 s per shard here) that the kill lands between the first and the last
    # commit; the killed driver's lease expires 4 s after its last renewal, and the rerun waits.
    if target == "local":
        return kind_spec_dict(kind, output, photos, slow=True, output__lease_ttl_s=4)
    url = f"s3://latentmill/kill-{kind}-{output.parent.name}-{output.name}"
    data = kind_spec_dict(kind, url, photos, slow=True, output__lease_ttl_s=4)
    data["output"]["storage"] = s3_storage(s3_server)
    return data


@pytest.fixture(scope="module")
def actors_killed(ray_cluster, s3_server, photos, tmp_path_factory):
    """kind -> (spec, outcome, shards committed at the kill) of a run on S3 whose stage actor
    processes were all killed after its first commit; run once per kind and shared by both tests."""
    import psutil

    runs: dict[str, tuple] = {}

    def run(kind: str) -> tuple:
        if kind not in runs:
            output = tmp_path_factory.mktemp(f"actors-killed-{kind}") / "out"
            spec = parse_spec(yaml.safe_dump(job_spec(kind, "s3", output, s3_server, photos)))
            thread, outcome = run_in_thread(spec)
            wait_for_commit(spec, thread, timeout=300)
            # This test process started the Ray cluster: its stage actors are its descendants.
            actors = [p for p in psutil.Process().children(recursive=True) if "StageActor" in " ".join(p.cmdline())]
            assert len(actors) >= 2  # the job's stage actors (a finished job's may still be exiting)
            at_kill = committed(spec)
            for process in actors:
                process.send_signal(signal.SIGKILL)
            thread.join(timeout=600)
            runs[kind] = spec, outcome, at_kill
        return runs[kind]

    return run


@pytest.mark.parametrize("kind", ["generate", "encode", "generate-video"])
def test_killed_actor_processes_are_restarted_and_nothing_is_lost(actors_killed, kind):
    spec, outcome, at_kill = actors_killed(kind)
    assert len(at_kill) < 8, "the kill must land mid-run"
    assert "error" not in outcome, outcome.get("error")
    total = SLOW_SAMPLES[kind]
    assert outcome["report"]["generated"] == total
    result = verify_output(spec.output.url, spec.output.storage)
    assert result["ok"], result["problems"]
    assert (result["unique_keys"], result["duplicates"], result["missing"]) == (total, 0, 0)


# Every kind once, and both stores: generate on S3, the others on local disk (each pair is a driver
# start, a kill and a rerun: about a minute of the 2-core test machine).
@pytest.mark.parametrize("kind, target", [("generate", "s3"), ("encode", "local"), ("generate-video", "local")])
def test_driver_killed_mid_run_resumes_to_the_same_output(
    ray_cluster, s3_server, photos, actors_killed, tmp_path, kind, target
):
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(job_spec(kind, target, tmp_path / "killed", s3_server, photos)))
    spec = parse_spec(spec_path.read_text(), source=str(spec_path))
    layout = OutputLayout(spec.output.url, spec.output.storage)
    driver = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "run", str(spec_path), "--address", ray_cluster, "--quiet"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    try:
        while layout.read_job() is None or not committed(spec):
            assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no shard committed in time"
            time.sleep(0.05)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    # The killed driver still holds the output: a rerun refuses until its lease expires, then takes it over.
    killed = OutputLease(layout, "probe", 4).current()[1]
    assert not killed["released"]
    with pytest.raises(LeaseHeld, match=killed["run_id"]):
        run_job(spec, progress=False)
    at_kill = committed(spec)
    assert 1 <= len(at_kill) < 8, f"the kill must land mid-run, {len(at_kill)} of 8 shards were committed"
    assert not verify_output(spec.output.url, spec.output.storage)["ok"]

    total = SLOW_SAMPLES[kind]
    report = run_job(spec, progress=False, wait=True)  # waits for the killed driver's lease to expire
    assert any(n.startswith("took over the expired lease of run " + killed["run_id"]) for n in report["notes"])
    assert time.time() >= killed["expires_unix"]
    generation, record = OutputLease(layout, "probe", 4).current()
    assert record["released"] and record["run_id"] == report["run_id"] and generation == killed["generation"] + 1
    assert report["already_committed"] + report["generated"] == total
    assert report["generated"] <= total - total // 8 * len(at_kill)
    result = verify_output(spec.output.url, spec.output.storage)
    assert result["ok"], result["problems"]
    assert (result["unique_keys"], result["duplicates"], result["missing"]) == (total, 0, 0)

    # Same batch composition on the same machine: every shard is byte-identical (mp4s too: one
    # x264 thread, no mbtree), whatever the storage and whichever process was killed (a restarted
    # actor's calls are retried whole).
    assert committed(spec) == committed(actors_killed(kind)[0])
