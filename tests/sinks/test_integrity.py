"""Output integrity on real runs: clean exits, damage found and regenerated, repairs that cannot
destroy a shard, weights and devices in the job identity, Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import yaml
from PIL import Image

import decoders
from jobs.local import run_job
from jobs.spec import parse_spec
from pipelines.errors import OutputConflict
from pipelines.faults import Fault
from pipelines.readers import webdataset
from pipelines.sinks.layout import OutputLayout
from pipelines.verify import verify_output
from tests.conftest import s3_storage
from tests.support.jobspecs import spec_dict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = [sys.executable, "-m", "jobs.cli"]
# The abort at exit this guards against (pyarrow reading from Python file objects) hit 1 run in 3:
# 12 runs in a row miss it with probability (2/3)^12 < 1%.
RUNS = 12


def make_spec(output, **changes):
    return parse_spec(yaml.safe_dump(spec_dict(output, **changes)), source="test.yaml")


def digests(url, storage=None) -> dict[str, str]:
    return {name: m["tar_sha256"] for name, m in OutputLayout(str(url), storage).committed_markers().items()}


def pixels(url, storage=None) -> dict[str, np.ndarray]:
    return {s["__key__"]: np.asarray(Image.open(io.BytesIO(s["png"]))).astype(int) for s in webdataset(str(url), storage)}


@pytest.fixture(scope="module")
def finished(ray_cluster, tmp_path_factory):
    """A finished 4-shard job and its spec file."""
    root = tmp_path_factory.mktemp("integrity")
    spec_path = root / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict(root / "out", num_images=32)))
    spec = parse_spec(spec_path.read_text())
    run_job(spec, progress=False)
    return spec_path, spec, root / "out"


# -- clean exits -------------------------------------------------------------------------------


def test_commands_exit_cleanly_every_time(finished, tmp_path):
    spec_path, _, out = finished
    commands = {
        "verify": CLI + ["verify", str(out)],
        "report": CLI + ["report", str(out)],
        "no-op run": CLI + ["run", str(spec_path), "--quiet"],  # nothing to do: no Ray needed
    }
    for name, command in commands.items():
        for attempt in range(RUNS):
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, (name, attempt, done.returncode, done.stderr[-2000:])
            assert "terminate called" not in done.stderr and "Traceback" not in done.stderr
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    tar = damaged / "shards" / "00001.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    for attempt in range(RUNS // 2):
        done = subprocess.run(CLI + ["verify", str(damaged)], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, (attempt, done.returncode, done.stderr[-2000:])
        assert "repair: rerun `latentmill run SPEC`" in done.stdout


def test_usage_errors_exit_2(tmp_path):
    done = subprocess.run(CLI + ["verify", str(tmp_path / "nothing")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "not a latentmill output" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(CLI + ["verify", str(tmp_path), "--check", "sometimes"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "--check" in done.stderr


def test_a_shard_committed_but_not_yet_indexed_is_checked_and_the_rerun_lists_it(finished, tmp_path):
    # A driver that dies between a shard's marker and the index update leaves exactly this.
    spec_path, _, out = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    index = json.loads((copy / "index.json").read_text())
    index["shards"] = [s for s in index["shards"] if s["name"] != "00002"]
    (copy / "index.json").write_text(json.dumps(index))

    result = verify_output(str(copy))
    assert (result["ok"], result["unindexed_shards"], result["problems"]) == (False, ["00002"], [])
    assert result["samples"] == 32  # its samples are counted: the shard is whole
    done = subprocess.run(CLI + ["verify", str(copy)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "not yet in index.json (an interrupted run): 00002" in done.stdout

    run_job(make_spec(copy, num_images=32), progress=False)  # nothing to generate; the index is rewritten
    assert verify_output(str(copy))["ok"]
    assert [s["name"] for s in OutputLayout(str(copy)).read_index()["shards"]] == ["00000", "00001", "00002", "00003"]


# -- damage found and regenerated ----------------------------------------------------------------


def test_resume_regenerates_damaged_shards_to_their_original_bytes(finished, tmp_path):
    _, _, out = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = digests(copy)
    shards = copy / "shards"
    (shards / "00000.tar").write_bytes((shards / "00000.tar").read_bytes()[:3000])  # truncated
    (shards / "00001.tar").unlink()  # deleted
    (shards / "00002.parquet").unlink()  # manifest deleted
    data = bytearray((shards / "00003.tar").read_bytes())
    data[700] ^= 0xFF  # one byte flipped: same size
    (shards / "00003.tar").write_bytes(bytes(data))

    assert verify_output(str(copy))["problems"]
    size_only = verify_output(str(copy))["problems"]
    assert not any("00003" in p for p in size_only)  # same size: only the hash tells
    full = verify_output(str(copy), full=True)
    assert any("00003: tar sha256 differs" in p for p in full["problems"]), full["problems"]
    assert subprocess.run(CLI + ["verify", str(copy), "--check", "full"], cwd=REPO, capture_output=True).returncode == 1

    report = run_job(make_spec(copy, num_images=32), progress=False, check_full=True)
    assert report["generated"] == 32
    assert sum("is generated again" in n for n in report["notes"]) == 4
    result = verify_output(str(copy), full=True)
    assert result["ok"], result["problems"]
    # Every tar has the bytes it had before the damage (manifests hold this run's stage timings).
    assert digests(copy) == before
    assert sorted(os.listdir(shards)) == sorted(f"0000{i}{ext}" for i in range(4) for ext in (".tar", ".parquet", ".done.json"))


# -- repairs cannot destroy a shard --------------------------------------------------------------


def _write_workers():
    """Ray workers running a write task. This test process started the Ray cluster: they are its descendants."""
    import psutil

    workers = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "write_shard" in " ".join(process.cmdline()):
                workers.append(process)
        except psutil.Error:  # exited meanwhile
            pass
    return workers


@pytest.mark.parametrize("target", ["local", "s3"])
def test_repair_killed_midway_leaves_the_old_shard_whole(ray_cluster, s3_server, tmp_path, target):
    if target == "local":
        data = spec_dict(tmp_path / "out", num_images=16, output__lease_ttl_s=3)
    else:
        data = spec_dict(f"s3://latentmill/repair-{uuid.uuid4().hex[:8]}", num_images=16, output__lease_ttl_s=3)
        data["output"]["storage"] = s3_storage(s3_server)
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    spec = parse_spec(spec_path.read_text())
    run_job(spec, progress=False, faults=(Fault.parse("denoise:raise:000000002"),))
    layout = OutputLayout(spec.output.url, spec.output.storage)
    old = layout.committed_markers()["00000"]
    assert old["failed_keys"] == ["000000002"]

    driver = subprocess.Popen(
        CLI + ["run", str(spec_path), "--retry-failed", "--quiet", "--address", ray_cluster,
               "--inject-fault", "write:stall:00000"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _write_workers():  # the repair's write task, stalled halfway through its tar
            assert driver.poll() is None, driver.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the repair never started writing"
            time.sleep(0.2)
        time.sleep(1.0)
        for process in _write_workers():
            process.send_signal(signal.SIGKILL)
        time.sleep(2.0)  # Ray retries the write (it stalls again)
        assert layout.committed_markers()["00000"] == old  # the old marker still names the old files
        result = verify_output(spec.output.url, spec.output.storage, full=True)
        assert not result["problems"], result["problems"]
        assert result["failed_keys"] == ["000000002"]
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()

    report = run_job(spec, progress=False, retry_failed=True, wait=True)
    assert (report["generated"], report["failed"]) == (1, 0)
    result = verify_output(spec.output.url, spec.output.storage, full=True)
    assert result["ok"], result["problems"]
    new = layout.committed_markers()["00000"]
    assert (new["revision"], new["tar"], new["manifest"]) == (1, "00000.r1.tar", "00000.r1.parquet")
    assert layout.read_index()["shards"][0]["tar"] == "shards/00000.r1.tar"
    names = {p.rsplit("/", 1)[-1] for p in layout.fs.ls(layout.path("shards"), detail=False)}
    assert "00000.tar" not in names and "00000.r1.tar" in names  # the replaced files are removed


# -- what "identical" means: weights, devices, batch composition ----------------------------------


def test_changed_model_weights_or_decoder_checkpoint_are_refused(ray_cluster, tmp_path):
    from safetensors.torch import load_file, save_file

    from pipelines.models.tiny_sdxl import build_tiny_sdxl_pipeline

    model_dir = tmp_path / "model"
    build_tiny_sdxl_pipeline().save_pretrained(model_dir)
    checkpoint = tmp_path / "decoder.safetensors"
    decoders.build("taesd", tiny=True, seed=3).save_file(checkpoint)

    def spec():
        return make_spec(tmp_path / "out", num_images=8, model__reference=str(model_dir), decoder=str(checkpoint))

    run_job(spec(), progress=False)
    weights = model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, weights)
    with pytest.raises(OutputConflict, match=r"what differs from this spec: weights\.model") as refused:
        run_job(spec(), progress=False)
    assert "weights.decoder" not in str(refused.value)
    weights.write_bytes(original)
    decoders.build("taesd", tiny=True, seed=4).save_file(checkpoint)  # same path, other bytes
    with pytest.raises(OutputConflict, match=r"what differs from this spec: weights\.decoder") as refused:
        run_job(spec(), progress=False)
    assert "weights.model" not in str(refused.value)


def test_device_kind_is_recorded_and_a_change_refused(finished, tmp_path):
    _, _, out = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    layout = OutputLayout(str(copy))
    assert layout.read_job()["devices"] == {"decode": ["cpu"], "denoise": ["cpu"]}
    layout.check_devices({"decode": ["cpu"], "denoise": ["cpu"]})
    with pytest.raises(OutputConflict, match="generated on decode: cpu, denoise: cpu .* run on decode: cpu, denoise: cuda"):
        layout.check_devices({"decode": ["cpu"], "denoise": ["cuda"]})


def test_retried_samples_are_within_one_level_and_other_shards_byte_identical(finished, tmp_path):
    _, _, out = finished
    spec = make_spec(tmp_path / "retried", num_images=32)
    # Sample 9 fails once: its batch (8-11) is split and each sample retried alone (batch size 1).
    report = run_job(spec, progress=False, faults=(Fault.parse("denoise:raise:000000009:1"),))
    assert report["failed"] == 0
    a, b = digests(out), digests(tmp_path / "retried")
    assert {n for n in a if a[n] != b[n]} <= {"00001"}
    x, y = pixels(out), pixels(tmp_path / "retried")
    assert x.keys() == y.keys() and max(np.abs(x[k] - y[k]).max() for k in x) <= 1


# -- Ctrl-C --------------------------------------------------------------------------------------


def test_ctrl_c_stops_cleanly_and_a_rerun_completes(ray_cluster, tmp_path):
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict(
        tmp_path / "out", num_images=64, sampler__height=128, sampler__width=128, sampler__steps=8)))
    spec = parse_spec(spec_path.read_text())
    layout = OutputLayout(spec.output.url)
    driver = subprocess.Popen(CLI + ["run", str(spec_path), "--quiet", "--address", ray_cluster],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while layout.read_job() is None or not layout.committed_markers():
        assert driver.poll() is None, driver.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no shard committed in time"
        time.sleep(0.05)
    driver.send_signal(signal.SIGINT)
    started = time.monotonic()
    output, _ = driver.communicate(timeout=60)
    assert driver.returncode == 130, output[-3000:]
    assert time.monotonic() - started < 30
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert "interrupted:" in output and "rerun the same command to resume" in output
    markers = layout.committed_markers()
    assert len(markers) < 8, "the interrupt must land mid-run"
    assert [s["name"] for s in layout.read_index()["shards"]] == sorted(markers)
    assert OutputLayout(spec.output.url).read_job() and verify_output(spec.output.url)["problems"] == []

    report = run_job(spec, progress=False)  # the lease was released: no wait needed
    assert report["already_committed"] + report["generated"] == 64
    assert verify_output(spec.output.url)["ok"]
