"""kind: train-decoder on a real local Ray (Ray Train, 2 gloo workers) over a real encode output of
scikit-image's photographs; bad inputs refused before training starts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

import decoders
from jobs.local import run_job
from jobs.sample_photos import write_crops
from jobs.spec import parse_spec
from jobs.train import check_before_training
from pipelines.errors import ConfigError
from tests.conftest import REPO
from tests.jobspecs import spec_dict
from tests.test_kinds import encode_spec_dict


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


def test_train_decoder_writes_a_loadable_decoder_with_spec_metrics_report_and_checkpoints(encoded, tmp_path):
    out = tmp_path / "trained"
    report = run_job(parse(train_dict(encoded, out)), progress=False)
    assert report["steps"] == 4 and report["workers"] == 2 and len(report["history"]) == 4
    assert all({"pixel", "total", "images_per_s", "resource_s"} <= set(h) for h in report["history"])
    dec = decoders.load(str(out / "decoder"))
    assert type(dec.model).__name__ == "LeanDecoder" and dec.decode(torch.randn(1, 4, 8, 8)).shape == (1, 3, 64, 64)
    metrics = json.loads((out / "decoder" / "metrics.json").read_text())
    assert metrics["held_out_samples"] > 0 and metrics["psnr"] > 0 and "lpips" not in metrics
    assert yaml.safe_load((out / "decoder" / "training_spec.yaml").read_text())["architecture"] == "lean"
    assert (out / "loss.png").stat().st_size > 0 and "Held-out metrics" in (out / "report.md").read_text()
    assert list((out / "checkpoints").glob("*/checkpoint_*/state.safetensors"))


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


def test_a_checkpoint_of_another_architecture_is_refused_with_exit_code_2(encoded, tmp_path):
    path = tmp_path / "taesd.safetensors"
    decoders.load("random:taesd-tiny").save_file(path)
    spec_path = tmp_path / "train.yaml"
    spec_path.write_text(yaml.safe_dump(train_dict(encoded, tmp_path / "out", init_weights=str(path))))
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "run", str(spec_path)], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "init_weights" in done.stderr and "AutoencoderTiny" in done.stderr and "LeanDecoder" in done.stderr
