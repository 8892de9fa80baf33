"""kind: train-vae on a real local Ray (Ray Train, 2 gloo workers): a scaled-down teacher trained on
crops of scikit-image's photos is a loadable AutoencoderKL directory whose scaling brings training
crops' latents to mean 0, std 1, and beats the training images' mean colour on held-out photos it
never saw; bad input is refused in one line naming the field; a rerun has nothing to do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from diffusers import AutoencoderKL

import decoders
from decoders.metrics import score
from jobs.cli import main as cli_main
from jobs.local import run_job
from jobs.spec import parse_spec
from jobs.train.sample_photos import TRAIN_PHOTOS, write_crops
from jobs.train.vae_data import batch_at, image_urls, load_images, random_crops
from jobs.train.vae_worker import as_tensor

# Scaled down (about 40 s of training on 2 idle cores): 3 blocks (4x down) a few channels wide, on
# 32 px crops. PSNR over the mean colour observed: see MIN_MARGIN_DB.
TINY = {"block_out_channels": [16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8, "latent_channels": 4}
STEPS = 200
# The docs' scaled-down runs gave a held-out margin over the mean colour well above this (see
# docs/decoder-training.md, "The teacher autoencoder"); an untrained VAE is far below it.
MIN_MARGIN_DB = 3.0


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae-photos")
    write_crops(str(root / "train"), list(TRAIN_PHOTOS), count=60, size=48)
    write_crops(str(root / "test"), ["coffee", "chelsea"], count=8, size=32, seed=1)
    return root


def vae_dict(photos, output_url, **changes) -> dict:
    data = {
        "name": "test-vae", "kind": "train-vae",
        "data": {"train_url": str(photos / "train"), "held_out_url": str(photos / "test"), "crop": 32},
        "vae": TINY,
        "optim": {"steps": STEPS, "batch_size": 8, "lr": 0.002, "warmup_steps": 10},
        "scaling": {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1},
        "checkpoints": {"every_steps": 100}, "scaling_samples": 64, "progress_every_s": 0,
        "output": {"url": str(output_url)},
    }
    data.update(changes)
    return data


def write_spec(path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_batch_depends_on_seed_step_and_rank_only(photos):
    images = [np.asarray(np.random.default_rng(i).integers(0, 255, (40, 50, 3)), np.uint8) for i in range(3)]
    one = batch_at(images, 7, 1, 0, 4, 32, True)
    assert one.shape == (4, 32, 32, 3) and np.array_equal(one, batch_at(images, 7, 1, 0, 4, 32, True))
    assert not np.array_equal(one, batch_at(images, 8, 1, 0, 4, 32, True))
    assert not np.array_equal(one, batch_at(images, 7, 0, 0, 4, 32, True))


def test_train_vae_writes_a_teacher_that_beats_the_mean_colour_and_a_rerun_has_nothing_to_do(
        photos, ray_cluster, tmp_path, capsys):
    out = tmp_path / "teacher"
    report = run_job(parse_spec(yaml.safe_dump(vae_dict(photos, out))), progress=False)
    assert report["steps"] == STEPS and report["kind"] == "train-vae"
    assert all({"pixel", "kl", "total"} <= set(h) for h in report["history"])

    # The contract: a diffusers AutoencoderKL directory, loadable by diffusers and by decoders.load.
    model = AutoencoderKL.from_pretrained(str(out / "vae"))
    assert list(model.config.block_out_channels) == TINY["block_out_channels"]
    vae = decoders.load(str(out / "vae"))
    assert vae.can_encode and (vae.config.scaling_factor, vae.config.shift_factor) == (
        report["latent_scaling"]["scaling_factor"], report["latent_scaling"]["shift_factor"])
    # Its scaling brings training crops' latents (the posterior mean, as kind: encode takes) to mean 0, std 1.
    images = load_images(image_urls(str(photos / "train"), None, "data"), None, "data")
    crops = random_crops(images, 128, 32, True, np.random.default_rng(5))
    z = vae.encode(as_tensor(crops)).double()
    assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1) < 0.1, (float(z.mean()), float(z.std()))

    # Held-out photos it never saw: above the training images' mean colour by a margin.
    metrics = json.loads((out / "vae" / "metrics.json").read_text())
    base = metrics["mean_colour_baseline"]
    assert metrics["held_out_samples"] == 8 and metrics["against"] == "original images"
    assert metrics["psnr"] - base["psnr"] >= MIN_MARGIN_DB, metrics
    assert metrics["ssim"] > base["ssim"], metrics
    # metrics.json's numbers are the VAE's own: recompute one held-out image.
    test_image = load_images(image_urls(str(photos / "test"), None, "data"), None, "data")[0]
    x = as_tensor(test_image[None])
    mine = score(x.double(), vae.decode(vae.encode(x)).double())["psnr"][0]
    assert mine > base["psnr"], (mine, base)
    assert yaml.safe_load((out / "vae" / "training_spec.yaml").read_text())["kind"] == "train-vae"
    assert "mean colour" in (out / "report.md").read_text() and (out / "loss.png").stat().st_size > 0

    # Once more: nothing to do, and the report as it was.
    before = (out / "report.json").read_bytes()
    spec_path = write_spec(tmp_path / "vae.yaml", vae_dict(photos, out))
    capsys.readouterr()
    assert cli_main(["run", spec_path, "--quiet"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "report.json").read_bytes() == before


def _refused(tmp_path, capsys, data: dict) -> str:
    code = cli_main(["run", write_spec(tmp_path / "bad.yaml", data), "--dry-run"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_input_is_refused_in_one_line_naming_the_field_or_file(photos, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _refused(tmp_path, capsys, vae_dict(photos, tmp_path / "o", data={
        "train_url": str(empty), "held_out_url": str(photos / "test")}))
    assert line.startswith("data.train_url:") and "no images" in line and str(empty) in line
    line = _refused(tmp_path, capsys, vae_dict(photos, tmp_path / "o", data={
        "train_url": str(photos / "train"), "held_out_url": str(photos / "test"), "crop": 36}))
    assert line.startswith("data.crop:") and "a multiple of 4" in line
    line = _refused(tmp_path, capsys, vae_dict(photos, tmp_path / "o", data={
        "train_url": str(photos / "train"), "held_out_url": str(photos / "test"), "crop": 64}))
    assert line.startswith("data.crop:") and "larger than" in line and ".png" in line
    line = _refused(tmp_path, capsys, vae_dict(photos, tmp_path / "o", data={
        "train_url": str(photos / "train"), "held_out_url": str(photos / "train")}))
    assert line.startswith("data.held_out_url:")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    line = _refused(tmp_path, capsys, vae_dict(photos, tmp_path / "o", data={
        "train_url": str(broken), "held_out_url": str(photos / "test")}))
    assert line.startswith("data.train_url:") and "a.png" in line
    line = _refused(tmp_path, capsys, vae_dict(photos, tmp_path / "o", vae={**TINY, "norm_num_groups": 7}))
    assert line.startswith("vae.norm_num_groups:")
