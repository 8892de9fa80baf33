"""Metrics agree with scikit-image; LPIPS runs only with its trunk weights; the lean decoder's FLOPs;
the linear baseline; the training step's pieces (pure torch, no Ray)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from decoders import metrics
from decoders.flops import count_flops


def image_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """24 pairs (H, W, 3) in [0, 1]: identical, constant, noisy, smooth, uint8 levels, several sizes."""
    rng = np.random.default_rng(0)
    pairs = []
    for h, w in [(11, 11), (16, 23), (32, 32), (37, 50), (64, 64), (48, 80)]:
        a = rng.random((h, w, 3))
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        smooth = np.stack([0.5 + 0.4 * np.sin(3 * x + c) * np.cos(2 * y) for c in range(3)], -1)
        pairs += [
            (a, a.copy()),                                                  # identical
            (np.full((h, w, 3), 0.25), np.full((h, w, 3), 0.75)),           # constant vs constant
            (smooth, np.clip(smooth + rng.normal(0, 0.05, smooth.shape), 0, 1)),
            (np.round(a * 255) / 255, np.round(rng.random((h, w, 3)) * 255) / 255),
        ]
    return pairs


def as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None]


@pytest.mark.parametrize("index", range(24))
def test_psnr_and_ssim_match_scikit_image(index):
    a, b = image_pairs()[index]
    ours_ssim = float(metrics.ssim(as_batch(a), as_batch(b)))
    theirs_ssim = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        data_range=1.0, channel_axis=-1)
    assert ours_ssim == pytest.approx(theirs_ssim, abs=1e-4)
    ours_psnr = float(metrics.psnr(as_batch(a), as_batch(b)))
    if np.array_equal(a, b):
        assert math.isinf(ours_psnr) and ours_psnr > 0
    else:
        assert ours_psnr == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-4)


def test_identical_images_give_infinite_psnr_ssim_one_and_json_safe_output():
    from pipelines.sinks.storage import json_safe

    x = torch.rand(2, 3, 16, 16)
    scores = metrics.score(x, x.clone())
    assert scores["psnr"] == [math.inf, math.inf] and scores["ssim"] == pytest.approx([1.0, 1.0])
    assert json_safe({"psnr": scores["psnr"]}) == {"psnr": ["inf", "inf"]}


def test_scores_compare_after_uint8_rounding():
    x = torch.rand(1, 3, 16, 16)
    nudged = x + 0.4 / 255 * (torch.rand_like(x) - 0.5)  # below half a level: same stored PNG...
    rounded = metrics.as_uint8_levels(x)
    same = (metrics.as_uint8_levels(nudged) == rounded).all()
    assert math.isinf(metrics.score(x, nudged)["psnr"][0]) == bool(same)


def test_ssim_refuses_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


@pytest.fixture
def lpips_trunk(tmp_path, monkeypatch):
    """TEST-ONLY AlexNet trunk weights (random, fixed seed) where torchvision looks for the real ones.
    Values computed with them are not LPIPS; the code labels them lpips_test_only."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = metrics.alexnet_weights_path()
    os.makedirs(os.path.dirname(path))
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), path)
    return path


def test_lpips_without_trunk_weights_says_which_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(metrics.LPIPSWeightsMissing) as info:
        metrics.LPIPS()
    message = str(info.value)
    assert metrics.ALEXNET_FILE in message and str(tmp_path / "empty" / "hub" / "checkpoints") in message
    assert "not computed" in metrics.lpips_status(None)


def test_lpips_with_test_weights_is_zero_for_identical_images_and_labelled_test_only(lpips_trunk):
    lpips = metrics.LPIPS()
    assert lpips.verified is False  # not torchvision's published file
    x = torch.rand(2, 3, 64, 64)
    distances = lpips(x, x.clone())
    assert torch.allclose(distances, torch.zeros(2), atol=1e-6)
    assert (lpips(x, torch.rand_like(x)) > 0).all()
    scores = metrics.score(x, torch.rand_like(x), lpips)
    assert "lpips" not in scores and len(scores["lpips_test_only"]) == 2
    assert "not LPIPS" in metrics.lpips_status(lpips)


def test_lean_decoder_has_at_most_a_twentieth_of_the_sdxl_vae_decoder_flops_and_fewer_than_taesd():
    lean = count_flops("random:lean", 1024, 1024)
    assert lean <= count_flops("random:sdxl-vae", 1024, 1024) / 20
    assert lean <= 523e9 and lean < count_flops("random:taesd", 1024, 1024)


def test_lean_decoder_round_trips_through_save_and_load(tmp_path):
    import decoders

    dec = decoders.load("random:lean-tiny")
    dec.save_pretrained(tmp_path / "lean")
    again = decoders.load(str(tmp_path / "lean"))
    z = torch.randn(1, 4, 8, 8)
    assert torch.equal(dec.decode(z), again.decode(z)) and dec.decode(z).shape == (1, 3, 64, 64)


def test_linear_decoder_fit_recovers_an_affine_map_in_closed_form():
    from decoders.base import Decoder
    from decoders.linear import LinearDecoder

    torch.manual_seed(0)
    truth = LinearDecoder()
    torch.nn.init.normal_(truth.proj.weight, std=0.05)
    latents = torch.randn(12, 4, 6, 6)
    with torch.no_grad():
        images = truth.decode(latents).sample * 0.5 + 0.5
    fitted = LinearDecoder()
    fitted.fit(latents, images)
    decoded = Decoder(fitted, "linear").decode(latents)
    assert torch.allclose(decoded, images.clamp(0, 1), atol=1e-4)


def test_state_split_into_tensors_and_json_round_trips():
    from decoders.training import join_tensors, split_tensors

    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    tensors: dict = {}
    skeleton = split_tensors(state, "", tensors)
    import json

    back = join_tensors(json.loads(json.dumps(skeleton)), tensors)
    assert back["param_groups"] == state["param_groups"] and list(back["state"]) == [0]
    assert torch.equal(back["state"][0]["exp_avg"], torch.ones(2))


def _trainer(adversarial=0.0, ema=None, lpips=None, lpips_weight=0.0):
    import decoders
    from decoders.training import DecoderTrainer, PatchDiscriminator, TrainableDecoder, TrainSettings

    torch.manual_seed(0)
    dec = decoders.build("random:lean-tiny")
    dec.model.requires_grad_(True)
    settings = TrainSettings(steps=30, lr=3e-3, warmup_steps=2, adversarial_weight=adversarial, adversarial_start_step=2,
                             ema_decay=ema, lpips_weight=lpips_weight)
    disc = PatchDiscriminator(channels=8) if adversarial else None
    return DecoderTrainer(TrainableDecoder(dec), settings, discriminator=disc, lpips=lpips)


def test_training_steps_lower_the_loss_and_a_restored_state_continues_identically():
    from decoders.training import warmup_cosine

    torch.manual_seed(1)
    latents = torch.randn(4, 4, 8, 8)
    images = torch.rand(4, 3, 64, 64)
    trainer = _trainer(adversarial=0.1, ema=0.9)
    first = trainer.step(latents, images)["pixel"]
    for _ in range(9):
        trainer.step(latents, images)
    later = trainer.step(latents, images)
    assert later["pixel"] < first and "adversarial" in later and "discriminator" in later
    tensors, meta = trainer.state()
    restored = _trainer(adversarial=0.1, ema=0.9)
    restored.load_state(tensors, meta)
    a, b = trainer.step(latents, images), restored.step(latents, images)
    assert a["total"] == pytest.approx(b["total"], rel=1e-5) and restored.step_count == trainer.step_count == 12
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1) and warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_lpips_loss_term_trains_with_test_only_weights(lpips_trunk):
    trainer = _trainer(lpips=metrics.LPIPS(), lpips_weight=0.5)
    out = trainer.step(torch.randn(2, 4, 8, 8), torch.rand(2, 3, 64, 64))
    # Unverified trunk weights: the loss term is named lpips_test_only in the history, never lpips.
    assert "lpips" not in out and out["lpips_test_only"] > 0
    assert out["total"] == pytest.approx(out["pixel"] + out["lpips_test_only"], rel=1e-5)
    from jobs.train.report import LOSS_TERMS, render_markdown

    report = {"name": "t", "architecture": "lean", "target": "image", "steps": 1, "workers": 1, "resource": "CPU",
              "resumed_from_step": None, "images_seen": 2, "images_per_s": 1.0, "cpu_seconds": 1.0, "train_samples": 2,
              "held_out_samples": 1, "latent_scaling": None,
              "final_loss": {k: out[k] for k in LOSS_TERMS if k in out},
              "held_out": {"held_out_samples": 1, "psnr": 10.0, "ssim": 0.5, "lpips_status": "lpips_test_only: ..."}}
    assert "| lpips_test_only |" in render_markdown(report) and "| lpips |" not in render_markdown(report)


def test_grid_columns_are_as_wide_as_their_whole_label():
    import io as _io

    import torch
    from PIL import Image, ImageDraw

    from jobs.eval.common import render_grid

    name = "random:tae-temporal-with-a-long-checkpoint-name"
    grid = Image.open(_io.BytesIO(render_grid([("original", torch.rand(2, 3, 32, 32)), (name, torch.rand(2, 3, 32, 32))])))
    needed = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(name)
    assert grid.size[0] >= 96 + needed  # the second column holds the whole name (was cut at 16 characters)
