"""`latentmill eval --baseline`: constant colours scored as scikit-image scores them, a decoder that
outputs the mean colour scoring exactly like the mean-colour baseline, the untrained network with the
train-decoder job's own initial weights and latent normalisation; bad baseline arguments exit 2."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import decoders
from decoders.base import Decoder
from decoders.linear import LinearDecoder
from jobs.cli import main as cli_main
from jobs.eval.baselines import untrained_decoder
from jobs.eval.images import load_eval_set
from jobs.local import run_job
from jobs.spec import parse_spec
from jobs.train.data import is_held_out
from jobs.train.driver import check_before_training
from jobs.train.sample_photos import write_crops
from pipelines.readers import webdataset
from tests.support.jobspecs import encode_spec_dict

FRACTION = 0.3  # of 24 crops, the held-out split the evaluation scores (the rest: the training split)


@pytest.fixture(scope="module")
def encoded(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    write_crops(str(root / "photos"), ["astronaut", "coffee", "rocket", "chelsea"], count=24, size=64)
    out = root / "encoded"
    run_job(parse_spec(yaml.safe_dump(encode_spec_dict(root / "photos", out))), progress=False)
    return out


def stored_images(url) -> dict[str, np.ndarray]:
    """key -> the stored image as uint8 (H, W, 3), read with the webdataset reader."""
    return {s["__key__"]: np.asarray(Image.open(io.BytesIO(s["png"])).convert("RGB")) for s in webdataset(str(url))}


def training_mean_colour(images: dict[str, np.ndarray]) -> np.ndarray:
    train = [x for k, x in images.items() if not is_held_out(k, FRACTION, 0)]
    return np.stack(train).reshape(-1, 3).astype(np.float64).mean(0) / 255


def save_mean_colour_linear_decoder(colour: np.ndarray, path) -> str:
    """A LinearDecoder whose weights ignore the latents and whose bias is the mean colour: another
    model class and another code path than the mean-colour baseline."""
    model = LinearDecoder(latent_channels=4)
    with torch.no_grad():
        model.proj.weight.zero_()
        model.proj.bias.copy_(torch.tensor(colour * 2 - 1, dtype=torch.float32).repeat_interleave(64))
    Decoder(model, "mean colour, as a linear decoder").save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def evaluated(encoded, tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines-eval")
    images = stored_images(encoded)
    colour = training_mean_colour(images)
    mean_decoder = save_mean_colour_linear_decoder(colour, root / "mean-decoder")
    assert cli_main(["eval", str(encoded), "--held-out-fraction", str(FRACTION), "--decoder", mean_decoder,
                     "--baseline", "grey", "--baseline", "mean-colour", "--baseline", "linear",
                     "--baseline", "untrained:lean", "--out", str(root / "eval")]) == 0
    result = json.loads((root / "eval" / "eval.json").read_text())
    return result, images, colour, (root / "eval" / "eval.md").read_text()


def row(result: dict, name: str) -> dict:
    return next(r for r in result["rows"] if r["decoder"] == name)


def skimage_scores(originals: list[np.ndarray], colour) -> tuple[float, float]:
    """Mean PSNR and SSIM (scikit-image) of one flat colour, stored as uint8, against the originals."""
    level = np.round(np.asarray(colour) * 255) / 255
    psnrs, ssims = [], []
    for original in originals:
        reference = original.astype(np.float64) / 255
        test = np.broadcast_to(level, reference.shape)
        psnrs.append(peak_signal_noise_ratio(reference, test, data_range=1))
        ssims.append(structural_similarity(reference, test, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False, data_range=1.0, channel_axis=-1))
    return float(np.mean(psnrs)), float(np.mean(ssims))


def test_constant_baselines_score_as_scikit_image_scores_a_flat_image(evaluated):
    result, images, colour, markdown = evaluated
    held_out = [images[k] for k in result["keys"]]
    assert 2 <= len(held_out) < len(images) and all(is_held_out(k, FRACTION, 0) for k in result["keys"])
    for name, flat in (("grey 0.5", (0.5, 0.5, 0.5)), ("mean colour", colour)):
        psnr, ssim = skimage_scores(held_out, flat)
        assert row(result, name)["psnr_vs_original"] == pytest.approx(psnr, abs=1e-6)
        assert row(result, name)["ssim_vs_original"] == pytest.approx(ssim, abs=1e-6)
        assert row(result, name)["flops_per_image"] == 0
    assert row(result, "mean colour")["output_mean"] == pytest.approx(float(colour.mean()), abs=1e-6)  # before rounding
    assert result["baselines_from"].startswith("the training split of ")
    assert "| mean colour |" in markdown and "Baselines computed from: the training split" in markdown


def test_a_decoder_that_outputs_the_mean_colour_scores_exactly_like_the_mean_colour_baseline(evaluated):
    result = evaluated[0]
    decoder, baseline = row(result, "mean colour, as a linear decoder"), row(result, "mean colour")
    for metric in ("psnr_vs_original", "ssim_vs_original", "psnr_vs_reference", "ssim_vs_reference"):
        assert decoder[metric] == baseline[metric], metric  # scored after uint8 rounding: exactly equal
    assert decoder["output_mean"] == pytest.approx(baseline["output_mean"], abs=1e-6)  # float32 before rounding
    # And the linear decoder fitted on the latents is another row, with other numbers.
    assert row(result, "linear (least squares)")["psnr_vs_original"] != baseline["psnr_vs_original"]


def test_the_untrained_baseline_is_the_train_decoder_jobs_initial_network_with_its_normalisation(evaluated, encoded):
    result = evaluated[0]
    assert "lean, untrained" in [r["decoder"] for r in result["rows"]]
    spec = parse_spec(yaml.safe_dump({
        "name": "t", "kind": "train-decoder", "architecture": "lean",
        "data": {"urls": [str(encoded)], "held_out_fraction": FRACTION}, "output": {"url": str(encoded) + "-train"},
    }), source="train.yaml")
    job_config = check_before_training(spec)["decoder"]["config"]
    _, latents, _ = load_eval_set(str(encoded), FRACTION, 0, 4096, training=True)
    baseline = untrained_decoder("lean", latents, "lean, untrained")
    for field in ("scaling_factor", "shift_factor"):
        assert baseline.config[field] == job_config[field]
    normalised = baseline.to_decoder_space(latents.double())
    assert abs(float(normalised.mean())) < 1e-4 and float(normalised.std(correction=0)) == pytest.approx(1, abs=1e-4)
    initial = decoders.build("lean", seed=spec.seed, device="cpu").model.state_dict()
    assert all(torch.equal(initial[k], v) for k, v in baseline.model.state_dict().items())


@pytest.mark.parametrize("argv, message", [
    (["--baseline", "black"], "--baseline"),
    (["--baseline", "linear"], "linear needs a training set"),
])
def test_bad_baselines_exit_2_with_one_line(encoded, tmp_path, capsys, argv, message):
    assert cli_main(["eval", str(encoded), *argv, "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "eval").exists()
