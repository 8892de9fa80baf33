"""Video metrics: the Fréchet distance against scipy's reference computation, centred covariances,
PSNR/SSIM/flicker on known cases, and pluggable perceptual and feature networks."""

from __future__ import annotations

import io
import json
import math
import tarfile

import numpy as np
import pytest
import scipy.linalg
import torch

import decoders
from decoders.metrics import as_uint8_levels
from decoders.video_metrics import (
    compare_decoders,
    compare_videos,
    feature_statistics,
    flicker,
    frechet_distance,
)
from pipelines.sinks.video import check_clips, check_mp4, encode_mp4, probe_mp4


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The FID papers' formula, computed the textbook way with scipy."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root.real))


@pytest.mark.parametrize("n, m, dim", [
    (500, 400, 4),   # full rank
    (300, 300, 16),
    (200, 150, 64),
    (40, 30, 64),    # fewer samples than dimensions: both covariances rank-deficient
    (12, 200, 32),   # one rank-deficient, one full rank
])
def test_frechet_distance_equals_scipy_reference(n, m, dim):
    rng = np.random.default_rng(dim + n)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    a = rng.normal(size=(n, dim)) @ mixing
    b = rng.normal(size=(m, dim)) @ (mixing + 0.3 * rng.normal(size=(dim, dim)) / np.sqrt(dim)) + 0.4
    ours, reference = frechet_distance(a, b), scipy_frechet(a, b)
    assert ours == pytest.approx(reference, abs=1e-4, rel=1e-6)
    assert frechet_distance(torch.tensor(a), torch.tensor(b)) == pytest.approx(ours, abs=1e-9)


def test_frechet_distance_uses_mean_centred_covariances():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 8)) + 5.0  # far from the origin: uncentred second moments would be huge
    shift = rng.normal(size=8)
    # A shifted copy has the same covariance: only the means differ.
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), abs=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    mu, sigma = feature_statistics(a)
    np.testing.assert_allclose(sigma, np.cov(a, rowvar=False), atol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(a[:1])


def test_flicker_is_zero_for_a_decoder_compared_with_itself():
    dec = decoders.load("random:tae-temporal-tiny", device="cpu")
    latents = torch.randn(2, 6, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    result = compare_decoders(latents, dec, dec, chunk_frames=2)
    assert result["flicker_excess"] == 0.0 and result["flicker_light"] > 0
    assert result["psnr_db"] == math.inf and result["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert "lpips" not in result and "fvd" not in result  # no network given: no such number


def test_flicker_psnr_and_ssim_on_known_videos():
    still = torch.full((1, 5, 3, 16, 16), 0.5)
    assert flicker(still) == 0.0
    blinking = still.clone()
    blinking[:, 1::2] = 0.7  # every other frame 0.2 brighter
    assert flicker(blinking) == pytest.approx(0.2, abs=1e-6)
    assert compare_videos(blinking, still)["flicker_excess"] == pytest.approx(0.2, abs=1e-6)
    clips = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    noisy = (clips + 0.2 * torch.randn(clips.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    result = compare_videos(noisy, clips)
    assert 10 < result["psnr_db"] < 20 and result["ssim"] < 0.9  # noise of sigma 0.2: about 15 dB
    with pytest.raises(ValueError, match="differ in shape"):
        compare_videos(still, still[:, :3])


def test_perceptual_and_feature_networks_are_hooks_named_by_the_caller():
    videos = torch.rand(6, 4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    darker = videos * 0.8

    def mean_abs(a, b):  # stands in for LPIPS: a per-frame distance
        return (a - b).abs().flatten(1).mean(1)

    def colour_features(v):  # stands in for I3D: per-clip features
        return v.mean(dim=(1, 3, 4)).numpy()

    result = compare_videos(darker, videos, perceptual={"mean_abs": mean_abs}, features={"colour_fd": colour_features})
    # Both are compared at the 256 levels stored frames have.
    levels = float((as_uint8_levels(videos) - as_uint8_levels(darker)).abs().mean())
    assert result["mean_abs"] == pytest.approx(levels, rel=1e-5)
    expected = scipy_frechet(colour_features(darker).astype(np.float64), colour_features(videos).astype(np.float64))
    assert result["colour_fd"] == pytest.approx(expected, abs=1e-6)


def test_mp4_round_trip_and_the_clip_check_of_verify():
    rng = np.random.default_rng(0)
    frames = np.repeat((rng.random((1, 32, 48, 3)) * 255).astype(np.uint8), 5, axis=0)
    data = encode_mp4(frames, fps=12, crf=0)
    # Repeatable bytes, also after torch has decoded in this process (x264's mbtree was not).
    svd = decoders.load("random:svd-vae-tiny", device="cpu")

    def decoded_clip(seed):
        latents = torch.randn(1, 8, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
        return (svd.decode(latents)[0] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    clips = [decoded_clip(seed) for seed in range(2)]
    encoded = [set(), set()]
    for seed in range(4):
        decoded_clip(10 + seed)
        for clip, seen in zip(clips, encoded):
            seen.add(encode_mp4(clip, fps=6))
    assert [len(seen) for seen in encoded] == [1, 1]
    info = probe_mp4(data)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (5, 48, 32, 12.0)
    row = {"key": "a", "status": "ok", "format": "mp4", "frames": 5, "width": 48, "height": 32, "fps": 12}
    assert check_mp4(data, row) == []
    assert check_mp4(data, {**row, "frames": 6, "fps": 10}) == ["frames is 5, the manifest says 6",
                                                                "fps is 12.0, the manifest says 10"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, blob in (("a.mp4", data), ("b.mp4", data[:200])):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    problems = check_clips(buffer.getvalue(), [row, {**row, "key": "b"}])
    assert len(problems) == 1 and problems[0].startswith("clip b: not a readable mp4")
    with pytest.raises(ValueError, match="even frame sizes"):
        encode_mp4(frames[:, :31], fps=12)


def test_bench_decoders_times_video_per_clip_length_and_chunk(capsys):
    from decoders import bench

    def rows(*extra):
        argv = ["--decoders", "svd-vae,tae-temporal", "--sizes", "16", "--chunk-frames", "all,1", "--json", *extra]
        assert bench.main(argv) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]

    counted = rows("--frames", "2,4", "--no-latency")
    # The SVD VAE decodes whole clips only; tae-temporal also in exact chunks of 1 frame.
    assert {(r["decoder"], r["frames"], r["chunk_frames"]) for r in counted} == {
        ("svd-vae", 2, None), ("svd-vae", 4, None), ("tae-temporal", 2, None), ("tae-temporal", 2, 1),
        ("tae-temporal", 4, None), ("tae-temporal", 4, 1)}
    timed = rows("--frames", "2", "--warmup", "0", "--repeats", "1", "--in-process")
    assert [(r["decoder"], r["chunk_frames"]) for r in timed] == [("svd-vae", None), ("tae-temporal", None),
                                                                   ("tae-temporal", 1)]
    for r in timed:
        assert r["median_s"] > 0 and r["peak_mem_mb"] is not None
        assert r["speedup"] is not None  # against the SVD VAE's whole-clip row of the same length
