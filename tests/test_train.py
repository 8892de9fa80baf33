"""kind: train-decoder on a real local Ray (Ray Train, 2 gloo workers) over a real encode output of
scikit-image's photographs; bad inputs refused before training starts; a killed worker and a killed
driver both resume from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import yaml

import decoders
from jobs.cli import main as cli_main
from jobs.local import run_job
from jobs.spec import parse_spec
from jobs.train.checkpoint import same_decoder
from jobs.train.data import epoch_share, scan, units, worker_stream
from jobs.train.driver import check_before_training, decoder_identity
from jobs.train.sample_photos import write_crops
from pipelines.config import StorageConfig
from pipelines.errors import ConfigError
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.lease import LeaseHeld, OutputLease
from tests.conftest import REPO
from tests.support.jobspecs import encode_spec_dict, spec_dict


@pytest.fixture(scope="module")
def encoded(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    write_crops(str(root / "photos"), ["astronaut", "rocket"], count=32, size=64)
    out = root / "encoded"
    run_job(parse_spec(yaml.safe_dump(encode_spec_dict(root / "photos", out))), progress=False)
    return out


def train_dict(data_url, output_url, **changes) -> dict:
    data = {
        "name": "test-train", "kind": "train-decoder",
        "data": {"urls": [str(data_url)], "held_out_fraction": 0.25},
        "architecture": "lean", "tiny": True,
        "optim": {"steps": 4, "batch_size": 2, "warmup_steps": 1},
        "scaling": {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 0.5},
        "checkpoints": {"every_steps": 2}, "eval_samples": 4, "progress_every_s": 0,
        "output": {"url": str(output_url)},
    }
    data.update(changes)
    return data


def parse(data: dict):
    return parse_spec(yaml.safe_dump(data), source="train.yaml")


def test_each_worker_streams_its_own_shuffled_part_and_a_resume_continues_it_exactly(encoded):
    shards = scan([str(encoded)], StorageConfig(), 0.25, 0)
    work, train = units(shards, 2), sum(len(s.train_keys) for s in shards)

    def latents(rank, start, count, buffer=8):
        stream = worker_stream(work, rank, 2, 0, start, StorageConfig(), None, buffer)
        return [next(stream)[0].numpy().tobytes() for _ in range(count)]

    epoch = [z for rank in (0, 1) for z in latents(rank, 0, sum(len(k) for _, k in epoch_share(work, rank, 2, 0, 0)))]
    # One epoch of both workers: every training sample once, and not in the order of the shards.
    assert len(epoch) == len(set(epoch)) == train
    assert latents(0, 0, 12) != latents(0, 0, 12, buffer=1)
    # A worker resumed at position 5 (or in a later epoch) reads what the uninterrupted one read there.
    whole = latents(0, 0, 40)
    assert latents(0, 5, 35) == whole[5:] and latents(0, 30, 10) == whole[30:]


def test_encode_output_without_latents_is_refused_before_training(ray_cluster, tmp_path):
    gen = tmp_path / "generated"
    run_job(parse_spec(yaml.safe_dump(spec_dict(gen, num_images=8))), progress=False)
    with pytest.raises(ConfigError, match="has no .*latent.npy"):
        check_before_training(parse(train_dict(gen, tmp_path / "out", data={"urls": [str(gen)], "held_out_fraction": 0.5})))


def test_latents_of_the_wrong_channel_count_are_refused(encoded, tmp_path):
    from decoders.lean import LeanDecoder

    path = tmp_path / "lean8.safetensors"
    decoders.Decoder(LeanDecoder(latent_channels=8, block_out_channels=(3, 8, 8, 8), layers_per_block=(0, 1, 1, 1)),
                     "lean8").save_file(path)
    with pytest.raises(ConfigError, match="8-channel latents"):
        check_before_training(parse(train_dict(encoded, tmp_path / "out", init_weights=str(path))))


def test_an_empty_held_out_split_is_refused(encoded, tmp_path):
    data = {"urls": [str(encoded)], "held_out_fraction": 1e-9}
    with pytest.raises(ConfigError, match="held-out split is empty"):
        check_before_training(parse(train_dict(encoded, tmp_path / "out", data=data)))


def test_a_checkpoint_of_another_architecture_is_refused_with_exit_code_2(encoded, tmp_path, capsys):
    path = tmp_path / "taesd.safetensors"
    decoders.load("random:taesd-tiny").save_file(path)
    spec_path = tmp_path / "train.yaml"
    spec_path.write_text(yaml.safe_dump(train_dict(encoded, tmp_path / "out", init_weights=str(path))))
    capsys.readouterr()
    assert cli_main(["run", str(spec_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "init_weights" in err and "AutoencoderTiny" in err and "LeanDecoder" in err


@pytest.mark.parametrize("changes, message", [
    ({"data": {"urls": ["x"], "shuffle_buffer": 0}}, "data.shuffle_buffer: expected a number of samples >= 1"),
    ({"output": {"url": "x", "lease_ttl_s": 0.5}}, "output.lease_ttl_s: expected a number of seconds >= 1"),
])
def test_bad_training_fields_are_named(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        parse(train_dict(tmp_path, tmp_path / "out", **changes))


def test_a_checkpoints_decoder_identity_ignores_the_order_diffusers_lists_its_defaults_in():
    # diffusers keeps `_use_default_values` as a set: another driver process lists it in another
    # order, which made a rerun refuse its own checkpoints ("of LeanDecoder, not LeanDecoder").
    identity = decoder_identity(parse(train_dict("unused", "unused")))
    assert not any(key.startswith("_") for key in identity["config"])
    saved = {**identity, "config": {**identity["config"], "_use_default_values": ["shift_factor", "latent_channels"]}}
    assert same_decoder(saved, identity)
    assert not same_decoder({**saved, "config": {**saved["config"], "latent_channels": 8}}, identity)
    assert not same_decoder({**saved, "class": "AutoencoderTiny"}, identity)


# Ray Train V2 writes this file beside a run's checkpoints each time it registers one: a checkpoint
# listed there is the one a restarted worker group or a rerun driver gets from get_checkpoint().
SNAPSHOT = "checkpoint_manager_snapshot.json"


def registered_steps(checkpoints) -> list[int]:
    """The steps of the checkpoints Ray Train has registered under `checkpoints` (OUTPUT/checkpoints)."""
    steps = []
    for snapshot in checkpoints.glob(f"*/{SNAPSHOT}"):
        try:
            names = [r["checkpoint_dir_name"] for r in json.loads(snapshot.read_text())["checkpoint_results"]]
            steps += [json.loads((snapshot.parent / name / "state.json").read_text())["step"] for name in names]
        except (OSError, ValueError, KeyError):
            pass  # being rewritten, or the checkpoint deleted after the listing (keep: 2)
    return sorted(steps)


def wait_for_checkpoint(out, running, deadline_s=240.0) -> list[int]:
    deadline = time.monotonic() + deadline_s
    while not (steps := registered_steps(out / "checkpoints")):
        assert running(), "training ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    return steps


def assert_resumed_and_finished(report, out, at_kill: list[int], steps: int) -> None:
    assert report["steps"] == steps and [h["step"] for h in report["history"]] == list(range(1, steps + 1))
    # Restarted from a checkpoint, not from 0: the latest one registered at the kill or a later one.
    assert max(at_kill) <= report["resumed_from_step"] < steps
    assert f"resumed from step {report['resumed_from_step']}" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["resumed_from_step"] == report["resumed_from_step"]
    dec = decoders.load(str(out / "decoder"))
    assert type(dec.model).__name__ == "LeanDecoder" and dec.decode(torch.randn(1, 4, 8, 8)).shape == (1, 3, 64, 64)


# Ray Train V2 hands a worker's report to its controller when the controller polls (every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default), and a worker's next report waits for that:
# each checkpoint costs up to one interval. At 0.5 s, 20 steps checkpointed every 2 leave some 4 s
# between the first registered checkpoint and the end for the kill to land in (steps take 0.03 s).
POLL_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
STEPS = 20
RESUME_STEPS = {"optim": {"steps": STEPS, "batch_size": 2, "warmup_steps": 1},
                "checkpoints": {"every_steps": 2, "max_failures": 1}}


def test_train_decoder_survives_a_killed_worker_and_writes_a_decoder_metrics_report_and_checkpoints(
    encoded, tmp_path, monkeypatch
):
    import psutil

    for name, value in POLL_ENV.items():
        monkeypatch.setenv(name, value)  # Ray Train passes it from the driver to its controller
    # Relative paths, as in the README's commands: they mean the driver's directory to the workers too
    # (Ray Train runs its workers in a directory of their own).
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "trained"
    spec = parse(train_dict(os.path.relpath(encoded), "trained", **RESUME_STEPS))
    started = time.time()
    outcome: dict = {}

    def train():
        try:
            outcome["report"] = run_job(spec, progress=False)
        except Exception as exc:  # handed to the test, which asserts on it
            outcome["error"] = exc

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    at_kill = wait_for_checkpoint(out, thread.is_alive)
    # This test process started the Ray cluster: the run's Ray Train workers are its descendants.
    workers = [p for p in psutil.Process().children(recursive=True)
               if p.create_time() >= started - 1 and "RayTrainWorker" in " ".join(p.cmdline())]
    assert len(workers) == 2, [" ".join(p.cmdline()) for p in workers]
    workers[0].send_signal(signal.SIGKILL)
    assert max(at_kill) < STEPS and not (out / "report.json").exists(), "the kill must land mid-training"
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert_resumed_and_finished(report, out, at_kill, STEPS)

    assert report["workers"] == 2
    assert all({"pixel", "total", "images_per_s", "resource_s"} <= set(h) for h in report["history"])
    # Trained from scratch: the decoder's config carries the scaling that normalised its training latents.
    dec = decoders.load(str(out / "decoder"))
    scaling = report["latent_scaling"]
    assert (dec.config.scaling_factor, dec.config.shift_factor) == (scaling["scaling_factor"], scaling["shift_factor"])
    assert scaling["scaling_factor"] != 1.0 and "latents normalised in the decoder: scaling_factor" in (out / "report.md").read_text()
    metrics = json.loads((out / "decoder" / "metrics.json").read_text())
    assert metrics["held_out_samples"] > 0 and metrics["psnr"] > 0 and "lpips" not in metrics
    assert yaml.safe_load((out / "decoder" / "training_spec.yaml").read_text())["architecture"] == "lean"
    assert (out / "loss.png").stat().st_size > 0 and "Held-out metrics" in (out / "report.md").read_text()
    assert list((out / "checkpoints").glob("*/checkpoint_*/state.safetensors"))


# Short, so the rerun soon takes the killed driver's lease over; long enough for the second driver's
# checks before it looks at the lease (about 5 s when its imports are cold), and for a renewal to be
# late on a loaded machine (at 2 s, with 3 test workers on 2 cores, the rerun lost its own lease).
LEASE_TTL_S = 10


def test_a_killed_training_driver_rerun_resumes_from_the_last_checkpoint(encoded, ray_cluster, tmp_path):
    out = tmp_path / "trained"
    spec_path = tmp_path / "train.yaml"
    spec_path.write_text(yaml.safe_dump(train_dict(encoded, out, **RESUME_STEPS,
                                                   output={"url": str(out), "lease_ttl_s": LEASE_TTL_S})))
    command = [sys.executable, "-m", "jobs.cli", "run", str(spec_path), "--address", ray_cluster, "--quiet"]
    env = {**os.environ, **POLL_ENV}
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        at_kill = wait_for_checkpoint(out, lambda: driver.poll() is None)
    finally:
        driver.send_signal(signal.SIGKILL)
        output = driver.communicate()[0].decode()
    assert max(at_kill) < STEPS and not (out / "report.json").exists(), "the kill must land mid-training"
    assert not (out / "decoder").exists(), output[-3000:]
    # The killed driver's lease outlives it by up to its TTL: a second driver refuses meanwhile.
    killed = OutputLease(OutputLayout(str(out)), "probe", LEASE_TTL_S).current()[1]
    assert not killed["released"]
    with pytest.raises(LeaseHeld, match=killed["run_id"]):
        run_job(parse(train_dict(encoded, out, **RESUME_STEPS, output={"url": str(out), "lease_ttl_s": LEASE_TTL_S})))
    # The same command again: it waits for the lease to expire, then Ray Train finds the run by
    # its name and storage and resumes.
    rerun = subprocess.run(command + ["--wait"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"trained lean for {STEPS} steps" in rerun.stdout
    report = json.loads((out / "report.json").read_text())
    assert any(n.startswith("took over the expired lease of run " + killed["run_id"]) for n in report.get("notes", []))
    assert OutputLease(OutputLayout(str(out)), "probe", LEASE_TTL_S).current()[1]["released"]
    assert_resumed_and_finished(report, out, at_kill, STEPS)
