"""The quality monitor: a light decoder's PSNR/SSIM against the model's VAE on a fraction of the
samples, per sample in the manifests, per shard in the report, flagged by `verify --quality`."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from decoders.metrics import score
from jobs.local import run_job
from jobs.spec import parse_spec
from pipelines.errors import ConfigError
from pipelines.models.decoding import load_decoder
from pipelines.readers import webdataset
from pipelines.stages.monitored import is_monitored
from tests.conftest import REPO
from tests.support.jobspecs import spec_dict

# random:taesd against the tiny model's VAE reaches about 6 dB: 40 flags every shard, 1 none.
MONITOR = {"fraction": 0.5, "min_psnr": 40.0}
MONITOR_STAGE = {"num_gpus": 0, "num_cpus": 0.25, "batch_size": 4}


def parse(data: dict):
    return parse_spec(yaml.safe_dump(data), source="test.yaml")


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, capture_output=True, text=True)


def manifest_rows(out) -> list[dict]:
    return [row for path in sorted((out / "shards").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]


@pytest.fixture(scope="module")
def monitored(ray_cluster, tmp_path_factory):
    """8 images in 2 shards, decoded by random:taesd, half of them monitored; latents kept."""
    out = tmp_path_factory.mktemp("monitored") / "out"
    spec = parse(spec_dict(out, num_images=8, decoder="random:taesd", quality_monitor=MONITOR,
                           output__samples_per_shard=4, output__save_latents=True, stages__monitor=MONITOR_STAGE))
    run_job(spec, progress=False)
    return out


def test_monitored_samples_get_psnr_against_the_reference_in_manifests_and_report(monitored):
    rows = manifest_rows(monitored)
    assert len(rows) == 8
    for row in rows:
        picked = is_monitored(row["key"], MONITOR["fraction"])
        assert (row["monitor_psnr"] is not None) == picked and (row["monitor_ssim"] is not None) == picked
    # The recorded value is the stored image's PSNR against the model's VAE decoding the same latents.
    reference = load_decoder("sdxl-vae", "tiny", "cpu", "float32")
    by_key = {row["key"]: row for row in rows}
    for sample in webdataset(str(monitored)):
        row = by_key[sample["__key__"]]
        if row["monitor_psnr"] is None:
            continue
        latents = torch.from_numpy(np.load(io.BytesIO(sample["latent.npy"])))[None]
        light = torch.from_numpy(np.array(Image.open(io.BytesIO(sample["png"])))).permute(2, 0, 1)[None] / 255
        expected = score(reference.decode(latents), light)
        # rel: the stage decoded the monitored samples as one batch; a pixel may round the other way.
        assert row["monitor_psnr"] == pytest.approx(expected["psnr"][0], rel=1e-4)
        assert row["monitor_ssim"] == pytest.approx(expected["ssim"][0], rel=1e-3)
        assert json.loads(sample["json"])["monitor_psnr"] == pytest.approx(row["monitor_psnr"])

    report = json.loads((monitored / "report.json").read_text())
    quality = report["quality"]
    assert quality["decoder"] == "random:taesd" and quality["reference"] == "sdxl-vae"
    assert quality["monitored"] == sum(row["monitor_psnr"] is not None for row in rows) > 0
    for name, shard in quality["shards"].items():
        values = [r["monitor_psnr"] for r in rows if r["shard"] == name and r["monitor_psnr"] is not None]
        assert shard["monitored"] == len(values) and shard["psnr"] == pytest.approx(np.mean(values))
    # Its cost is a stage's like any other.
    assert report["stages"]["monitor"]["items_out"] == 8 and quality["cost"]["busy_s"] > 0
    assert "## Quality monitor" in (monitored / "report.md").read_text()


def test_verify_quality_fails_naming_the_shards_below_the_threshold(monitored, tmp_path):
    assert cli("verify", str(monitored)).returncode == 0  # the data is whole; only --quality looks at quality
    result = cli("verify", str(monitored), "--quality")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "quality FAILED" in result.stdout
    for shard in ("00000", "00001"):
        assert f"shard {shard}: mean PSNR" in result.stdout and "< min_psnr 40" in result.stdout

    # Redecoding the kept latents with a threshold below what the decoder reaches passes.
    out = tmp_path / "redecoded"
    redecode = {"name": "redecode-monitored", "kind": "redecode", "input": {"url": str(monitored)},
                "decoder": "random:taesd", "quality_monitor": {"fraction": 0.5, "min_psnr": 1.0, "min_ssim": 0.0},
                "output": {"url": str(out), "samples_per_shard": 4},
                "stages": {"read": {"num_cpus": 0.25, "batch_size": 4},
                           "decode": {"num_gpus": 0, "num_cpus": 0.5, "batch_size": 4}, "monitor": MONITOR_STAGE}}
    run_job(parse(redecode), progress=False)
    passed = cli("verify", str(out), "--quality", "--json")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    quality = json.loads(passed.stdout)["quality"]
    assert quality["ok"] and quality["flagged"] == [] and quality["monitored"] > 0

    # An output whose job had no monitor has nothing to check: a usage error, not a pass.
    plain = tmp_path / "plain"
    shutil.copytree(out, plain)
    record = json.loads((plain / "latentmill.json").read_text())
    record["spec"]["quality_monitor"] = None
    (plain / "latentmill.json").write_text(json.dumps(record))
    unmonitored = cli("verify", str(plain), "--quality")
    assert unmonitored.returncode == 2 and "without a quality monitor" in unmonitored.stderr


@pytest.mark.parametrize("changes, field", [
    ({"quality_monitor": {"fraction": 0}}, "quality_monitor.fraction"),
    ({"quality_monitor": {"fraction": 2}}, "quality_monitor.fraction"),
    ({"quality_monitor": {"min_psnr": -1}}, "quality_monitor.min_psnr"),
    ({"quality_monitor": {"min_ssim": -0.5}}, "quality_monitor.min_ssim"),
    ({"quality_monitor": {"fraction": 0.5}, "decoder": "sdxl-vae"}, "quality_monitor"),
])
def test_bad_monitor_settings_are_spec_errors_naming_the_field(tmp_path, changes, field):
    data = spec_dict(tmp_path / "out", **{"decoder": "random:taesd", **changes})
    with pytest.raises(ConfigError, match=rf"test\.yaml:\d+: {field}: "):
        parse(data)


def test_monitor_settings_are_part_of_the_identity_only_when_on(tmp_path):
    def identity(**changes):
        return parse(spec_dict(tmp_path / "out", decoder="random:taesd", **changes)).identity()

    assert "quality_monitor" not in identity()  # outputs made before the monitor resume as before
    assert identity(quality_monitor={"fraction": 0.5}) != identity(quality_monitor={"fraction": 0.25})
    assert identity(quality_monitor={"fraction": 0.5})["quality_monitor"]["min_psnr"] is None
