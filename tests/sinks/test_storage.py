"""Object storage: jobs on a real S3-compatible server (moto, credentials checked) on 127.0.0.1,
storage faults injected into real runs, and bad storage input refused with nothing lost."""

from __future__ import annotations

import io
import json
import os
import time
import uuid

import numpy as np
import pytest
import yaml
from PIL import Image

from jobs.local import run_job
from jobs.spec import parse_spec
from pipelines.errors import ConfigError, OutputError
from pipelines.faults import Fault
from pipelines.readers import ray_dataset, webdataset
from pipelines.sinks.layout import OutputLayout
from pipelines.verify import verify_output
from tests.conftest import S3_SECRET_ENV, s3_storage
from tests.support.jobspecs import SLOW, kind_spec_dict, spec_dict
from tests.support.running import committed_markers, run_in_thread, wait_for_commit


def s3_spec(server, prefix=None, overrides=(), storage_changes=None, kind="generate", photos=None, **changes):
    url = f"s3://latentmill/{prefix or uuid.uuid4().hex[:8]}"
    data = kind_spec_dict(kind, url, photos, **changes)
    data["output"]["storage"] = s3_storage(server, **(storage_changes or {}))
    return parse_spec(yaml.safe_dump(data), source="s3-job.yaml", overrides=list(overrides))


def verify(spec):
    return verify_output(spec.output.url, spec.output.storage)


def images_by_key(spec) -> dict[str, np.ndarray]:
    return {
        s["__key__"]: np.asarray(Image.open(io.BytesIO(s["png"]))).astype(int)
        for s in webdataset(spec.output.url, spec.output.storage)
    }


@pytest.fixture(scope="module")
def s3_job(ray_cluster, s3_server):
    """One default generate job on S3 (24 samples), shared by the tests that only read it: its spec and report."""
    spec = s3_spec(s3_server)
    return spec, run_job(spec, progress=False)


def test_s3_job_is_read_back_by_webdataset_and_ray_data(s3_job):
    spec, report = s3_job
    assert report["generated"] == 24
    result = verify(spec)
    assert result["ok"], result["problems"]
    samples = list(webdataset(spec.output.url, spec.output.storage))
    assert sorted(s["__key__"] for s in samples) == [f"{i:09d}" for i in range(24)]
    assert all(json.loads(s["json"])["prompt"] == s["txt"].decode() for s in samples)
    rows = ray_dataset(spec.output.url, spec.output.storage, decoder=None).take_all()
    assert len(rows) == 24


def test_credentials_never_reach_saved_spec_or_reports(s3_job, s3_server):
    spec, _ = s3_job
    layout = OutputLayout(spec.output.url, spec.output.storage)
    saved = [layout.fs.cat_file(p) for p in layout.fs.find(layout.root) if p.endswith(".json")]
    assert saved and not any(s3_server.secret.encode() in blob or s3_server.key.encode() in blob for blob in saved)
    assert json.loads(layout.fs.cat_file(layout.path("latentmill.json")))["spec"]["output"]["storage"][
        "secret_access_key_env"
    ] == S3_SECRET_ENV


def test_storage_down_past_its_limit_fails_clearly_and_a_rerun_rides_out_a_shorter_outage(ray_cluster, s3_server):
    # Storage calls are retried while storage has been unreachable for less than 10 s; the output
    # lease outlives a renewal missed in a 3 s outage, and has expired when the first run fails.
    spec = s3_spec(s3_server, storage_changes={"timeout_s": 10}, output__lease_ttl_s=12, **SLOW["generate"])
    thread, outcome = run_in_thread(spec)
    wait_for_commit(spec, thread)
    s3_server.stop()
    try:
        thread.join(timeout=120)
    finally:
        s3_server.start()
    assert not thread.is_alive()
    error = outcome.get("error")
    assert isinstance(error, OutputError) and "unreachable for 10 s" in str(error), error
    committed = committed_markers(spec)
    result = verify(spec)
    assert committed and not result["problems"], result["problems"]  # every committed shard intact
    assert result["samples"] == sum(m["samples"] for m in committed.values())  # indexed or not

    # The rerun resumes once storage is back (after the lease the failed run could not release
    # expires), and an outage of 3 s in the middle of it is retried: it finishes the job.
    thread, outcome = run_in_thread(spec, wait=True)
    wait_for_commit(spec, thread, beyond=len(committed))
    s3_server.stop()
    try:
        time.sleep(3)
    finally:
        s3_server.start()
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"]["already_committed"] == result["samples"]
    result = verify(spec)
    assert result["ok"], result["problems"]
    assert result["unique_keys"] == 64


FAULTS = {
    "generate": (
        "denoise:raise:000000005",   # fails on every attempt
        "denoise:nan:000000010",     # NaN latents on every attempt
        "decode:raise:000000003:1",  # transient: fails once, then succeeds
    ),
    "encode": ("encode:raise:000000005", "read:raise:000000010", "encode:raise:000000003:1"),
}


@pytest.mark.parametrize("kind", ["generate", "encode"])
def test_failed_samples_are_retried_recorded_and_retried_later(ray_cluster, s3_server, photos, kind, request):
    # 24 samples in 3 shards for either kind (encode: a list of 24 of the photos).
    changes = {} if kind == "generate" else {"input__url": _first_photos(photos, 24)}
    spec = s3_spec(s3_server, kind=kind, photos=photos, **changes)
    faults = tuple(Fault.parse(text) for text in FAULTS[kind])
    report = run_job(spec, progress=False, faults=faults)
    assert (report["generated"], report["failed"]) == (22, 2)
    result = verify(spec)
    assert not result["ok"]
    assert (result["failed"], result["missing"], result["duplicates"]) == (2, 0, 0)
    assert result["failed_keys"] == ["000000005", "000000010"]
    layout = OutputLayout(spec.output.url, spec.output.storage)
    import pyarrow.parquet as pq

    rows = {r["key"]: r for r in pq.read_table(io.BytesIO(layout.fs.cat_file(layout.shard_paths("00000")["manifest"]))).to_pylist()}
    assert rows["000000005"]["status"] == "failed" and "injected fault" in rows["000000005"]["error"]
    assert rows["000000005"]["attempts"] == spec.stages.max_retries + 1
    assert rows["000000003"]["status"] == "ok"
    rows = pq.read_table(io.BytesIO(layout.fs.cat_file(layout.shard_paths("00001")["manifest"]))).to_pylist()
    assert ("NaN" if kind == "generate" else "injected fault") in next(r for r in rows if r["key"] == "000000010")["error"]

    again = run_job(spec, progress=False)  # a plain rerun leaves recorded failures alone
    assert again["generated"] == 0
    repaired = run_job(spec, progress=False, retry_failed=True)
    assert (repaired["generated"], repaired["failed"]) == (2, 0)
    result = verify(spec)
    assert result["ok"], result
    if kind == "generate":  # the same spec, run without faults
        clean = request.getfixturevalue("s3_job")[0]
    else:
        clean = s3_spec(s3_server, kind=kind, photos=photos, **changes)
        run_job(clean, progress=False)
    a, b = images_by_key(spec), images_by_key(clean)
    assert a.keys() == b.keys() and max(np.abs(a[k] - b[k]).max() for k in a) <= 1


def _first_photos(photos, count: int) -> str:
    """A list file naming the first `count` photos (an encode input of exactly that many)."""
    listing = photos / f"first-{count}.jsonl"
    paths = sorted(photos.glob("*.png"))[:count]
    listing.write_text("".join(json.dumps({"image": str(p)}) + "\n" for p in paths))
    return str(listing)


@pytest.mark.parametrize(
    "storage_changes, url, message",
    [
        ({"endpoint_url": "http://127.0.0.1:9", "timeout_s": 2}, None, "storage unreachable for 2 s"),
        ({}, "s3://no-such-bucket/x", "bucket 'no-such-bucket' does not exist"),
        ({"secret_access_key_env": "LATENTMILL_TEST_WRONG_SECRET"}, None, "access denied"),
    ],
)
def test_bad_storage_fails_before_any_work(ray_cluster, s3_server, storage_changes, url, message):
    os.environ["LATENTMILL_TEST_WRONG_SECRET"] = "not-the-secret"
    spec = s3_spec(s3_server, storage_changes=storage_changes)
    if url:
        spec = parse_spec(yaml.safe_dump({**spec.to_dict(), "output": {**spec.to_dict()["output"], "url": url}}))
    with pytest.raises(OutputError, match=message):
        run_job(spec, progress=False)


def test_unset_credential_variable_names_the_field(ray_cluster, s3_server):
    spec = s3_spec(s3_server, storage_changes={"access_key_id_env": "LATENTMILL_NOT_SET", "secret_access_key_env": "X"})
    with pytest.raises(ConfigError, match="output.storage.access_key_id_env: environment variable 'LATENTMILL_NOT_SET' is not set"):
        run_job(spec, progress=False)


def test_literal_secrets_are_not_accepted_in_a_spec(s3_server):
    data = spec_dict("s3://latentmill/x")
    data["output"]["storage"] = {"secret": "abc"}
    with pytest.raises(ConfigError, match="output.storage.secret: unknown field"):
        parse_spec(yaml.safe_dump(data))


def test_output_modes(ray_cluster, s3_server, tmp_path):
    prefix = uuid.uuid4().hex[:8]
    first = s3_spec(s3_server, prefix, num_images=20)  # shards of 8: the last one partial
    run_job(first, progress=False)
    other = s3_spec(s3_server, prefix, seed=99, num_images=20)
    with pytest.raises(OutputError, match="already holds a different job"):
        run_job(other, progress=False)
    assert verify(first)["ok"]  # the refused run touched nothing

    extended = s3_spec(s3_server, prefix, ["output.mode=extend"], num_images=30)
    report = run_job(extended, progress=False)
    assert report["already_committed"] == 16 and report["generated"] == 14  # shard 2 grew: redone
    result = verify(extended)
    assert result["ok"] and result["unique_keys"] == 30
    changed = s3_spec(s3_server, prefix, ["output.mode=extend"], num_images=30, seed=3)
    with pytest.raises(OutputError, match="extend needs the same model, sampler, seed"):
        run_job(changed, progress=False)

    overwritten = s3_spec(s3_server, prefix, ["output.mode=overwrite"], seed=99, num_images=10)
    run_job(overwritten, progress=False)
    result = verify(overwritten)
    assert result["ok"] and result["planned"] == 10 and result["committed_shards"] == 2


def test_foreign_data_under_the_prefix_is_refused(ray_cluster, tmp_path):
    out = tmp_path / "not-ours"
    out.mkdir()
    (out / "photo.jpg").write_bytes(b"x")
    spec = parse_spec(yaml.safe_dump(spec_dict(out)))
    with pytest.raises(OutputError, match="holds data that is not a latentmill job"):
        run_job(spec, progress=False)
    assert sorted(os.listdir(out)) == ["photo.jpg"]


def test_ray_dataset_filesystem_carries_no_credentials(s3_server):
    import pickle

    from pyarrow.fs import PyFileSystem

    from pipelines.readers import StorageHandler

    spec = s3_spec(s3_server)
    filesystem = PyFileSystem(StorageHandler(spec.output.url, spec.output.storage))
    shipped = pickle.dumps(filesystem)  # what Ray sends to its read tasks
    assert s3_server.secret.encode() not in shipped and s3_server.key.encode() not in shipped
    assert S3_SECRET_ENV.encode() in shipped  # the name of the variable, resolved in the task
    reopened = pickle.loads(shipped)
    assert reopened.get_file_info("latentmill").type.name == "Directory"
