"""One driver per output: real drivers (subprocesses) on local disk and on the local S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
import yaml

from jobs.spec import parse_spec
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.lease import LeaseHeld, OutputLease
from pipelines.verify import verify_output
from tests.conftest import s3_storage
from tests.support.jobspecs import spec_dict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 8 shards, about 1 s each here: long enough for other drivers to start while it runs.
SLOW = {"num_images": 64, "sampler__height": 128, "sampler__width": 128, "sampler__steps": 8, "output__lease_ttl_s": 4}


def write_job(tmp_path, target, s3_server, name="job.yaml", **changes):
    if target == "local":
        data = spec_dict(tmp_path / "out", **{**SLOW, **changes})
    else:
        data = spec_dict(f"s3://latentmill/lease-{tmp_path.name}", **{**SLOW, **changes})
        data["output"]["storage"] = s3_storage(s3_server)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path), parse_spec(path.read_text())


def start_driver(spec_path, ray_address, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "run", spec_path, "--address", ray_address, "--quiet", *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_for_first_commit(spec, driver, timeout=180):
    layout = OutputLayout(spec.output.url, spec.output.storage)
    deadline = time.monotonic() + timeout
    while layout.read_job() is None or not layout.committed_markers():
        assert driver.poll() is None, driver.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no shard committed in time"
        time.sleep(0.1)
    return layout


@pytest.mark.parametrize("target", ["local", "s3"])
def test_second_drivers_refuse_or_wait_while_the_first_runs(ray_cluster, s3_server, tmp_path, target):
    spec_path, spec = write_job(tmp_path, target, s3_server)
    overwrite_path, _ = write_job(tmp_path, target, s3_server, name="overwrite.yaml", output__mode="overwrite")
    first = start_driver(spec_path, ray_cluster)
    layout = wait_for_first_commit(spec, first)
    holder = OutputLease(layout, "probe", 4).current()[1]

    waiting = start_driver(spec_path, ray_cluster, "--wait")
    for path in (spec_path, overwrite_path):  # a plain second driver, and one asking to overwrite
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "jobs.cli", "run", path, "--address", ray_cluster, "--quiet"],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
        assert second.returncode == 1, second.stderr
        assert time.monotonic() - started < 30
        assert "being written by another latentmill driver" in second.stderr
        assert holder["run_id"] in second.stderr and f"pid {holder['pid']}" in second.stderr and "since" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None, "the refused drivers must not stop the first"

    assert first.wait(timeout=300) == 0, first.stdout.read()[-3000:]
    assert waiting.wait(timeout=120) == 0, waiting.stdout.read()[-3000:]
    waited = waiting.stdout.read()
    assert "generated 0 samples" in waited and "64 were already committed" in waited
    result = verify_output(spec.output.url, spec.output.storage)
    assert result["ok"], result["problems"]
    # The first driver's run is the only one that wrote a run report: the others touched nothing.
    assert [p.rsplit("/", 1)[-1] for p in layout.fs.ls(layout.path("runs"), detail=False)] == [f"{holder['run_id']}.json"]


# A killed holder's lease is taken over once it expires: the driver-kill tests of every kind
# (tests/test_resume_after_kill.py) check it on local disk and S3.


@pytest.mark.parametrize("target", ["local", "s3"])
def test_drivers_released_at_the_same_instant_end_with_one_holder(s3_server, tmp_path, target):
    url = str(tmp_path / "out") if target == "local" else f"s3://latentmill/race-{uuid.uuid4().hex[:8]}"
    storage = parse_spec(yaml.safe_dump({**spec_dict(url), "output": {"url": url, "storage": s3_storage(s3_server)}})).output.storage
    contenders = 6
    barrier = threading.Barrier(contenders)
    leases = [OutputLease(OutputLayout(url, storage if target == "s3" else None), f"run-{i}", 30) for i in range(contenders)]
    outcomes: list = [None] * contenders

    def contend(i):
        barrier.wait()
        try:
            outcomes[i] = leases[i].acquire()
        except LeaseHeld as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [o for o in outcomes if isinstance(o, OutputLease)]
    assert len(winners) == 1, outcomes
    assert all(isinstance(o, LeaseHeld) and winners[0].run_id in str(o) for o in outcomes if o is not winners[0])
    generation, record = winners[0].current()
    assert (generation, record["run_id"]) == (1, winners[0].run_id)
    winners[0].release()
    assert winners[0].current()[1]["released"]
    # Released: the next driver takes it at once.
    following = OutputLease(leases[0].layout, "next", 30).acquire()
    assert following.generation == 2 and following.taken_over is None
    following.release()
