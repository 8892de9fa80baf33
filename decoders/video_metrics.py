"""Video quality of a light decoder against a reference decoder: per-frame PSNR/SSIM (those of
`decoders.metrics`, scikit-image's definitions) and a pluggable perceptual metric such as LPIPS,
temporal flicker, and a Fréchet distance between feature sets. `latentmill eval` on a video output
runs these (jobs/eval/video.py).

    from decoders.video_metrics import compare_decoders, compare_videos, frechet_distance
    compare_decoders(latents, light, reference)           # decode both, then compare_videos
    compare_videos(light_pixels, reference_pixels, perceptual={"lpips": lpips_fn}, features={"fvd": i3d_fn})

Videos are float tensors (B, F, 3, H, W) in [0, 1], as `Decoder.decode` returns them.

No trained feature network ships with latentmill, and none can be downloaded here: LPIPS needs its
AlexNet/VGG trunk and linear heads, FVD an I3D network trained on Kinetics. Both are hooks the caller
fills with a network whose weights it has (`perceptual`, `features`); the result names a number after
the hook that made it, so a number from untrained weights is never reported as LPIPS or FVD.

The Fréchet distance is computed as in the FID and FVD papers: covariances of mean-centred features
(N - 1 normalisation, as numpy.cov) and the trace of the matrix square root of their product. (The
reference code of arXiv 2503.04871 skipped the centring; a shifted copy of a feature set then has a
nonzero covariance term. `test_video_metrics.py` checks that it does not here.)
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch

from decoders.metrics import as_uint8_levels, psnr, ssim

PerFrameMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (N, 3, H, W) x2 -> (N,)
FeatureNetwork = Callable[[torch.Tensor], np.ndarray | torch.Tensor]  # (B, F, 3, H, W) -> (B, D)


def _frames(video: torch.Tensor) -> torch.Tensor:
    if video.dim() != 5 or video.shape[2] != 3:
        raise ValueError(f"expected videos (B, F, 3, H, W), got shape {tuple(video.shape)}")
    return video.float().flatten(0, 1)


def _check_pair(light: torch.Tensor, reference: torch.Tensor) -> None:
    if light.shape != reference.shape:
        raise ValueError(f"videos differ in shape: {tuple(light.shape)} vs {tuple(reference.shape)}")


def flicker(video: torch.Tensor) -> float:
    """Mean absolute difference between consecutive frames (intensity in [0, 1]) of videos (B, F, 3, H, W)."""
    _frames(video)
    if video.shape[1] < 2:
        raise ValueError("flicker needs clips of at least 2 frames")
    return float((video[:, 1:].float() - video[:, :-1].float()).abs().mean())


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (mean-centred, N - 1 normalisation) of features (N, D), in float64."""
    x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"expected features (N, D) with N >= 2, got shape {x.shape}")
    mu = x.mean(axis=0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(matrix)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    Tr (S1 S2)^(1/2) is the sum of the square roots of the eigenvalues of S1 S2, which are those of
    the symmetric S1^(1/2) S2 S1^(1/2): an eigendecomposition of a symmetric matrix stays real and
    exact where a general sqrtm of a singular product (rank-deficient covariances, fewer samples
    than dimensions) goes complex or inaccurate.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"statistics differ in shape: {mu1.shape}, {sigma1.shape} vs {mu2.shape}, {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    product = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between two feature sets (N, D) and (M, D) (FID/FVD with the right network)."""
    return frechet_distance_from_statistics(*feature_statistics(features_a), *feature_statistics(features_b))


def compare_videos(
    light: torch.Tensor,
    reference: torch.Tensor,
    *,
    perceptual: Mapping[str, PerFrameMetric] | None = None,
    features: Mapping[str, FeatureNetwork] | None = None,
) -> dict:
    """Metrics of `light` against `reference`, both (B, F, 3, H, W) in [0, 1].

    perceptual: name -> per-frame distance (e.g. {"lpips": an lpips.LPIPS with trained weights,
    fed [-1, 1]}), reported as the mean over frames. features: name -> a video feature network
    (e.g. {"fvd": I3D}); the Fréchet distance between the two sets of clip features (needs >= 2 clips).
    """
    _check_pair(light, reference)
    # Compared at the 256 levels a stored clip's frames have, as images are (decoders.metrics.score).
    a, b = as_uint8_levels(_frames(light)), as_uint8_levels(_frames(reference))
    result = {
        "clips": int(light.shape[0]),
        "frames_per_clip": int(light.shape[1]),
        "psnr_db": float(psnr(b, a).mean()),  # +inf for identical clips, as for images
        "ssim": float(ssim(b, a).mean()),
    }
    if light.shape[1] > 1:
        result["flicker_light"] = flicker(light)
        result["flicker_reference"] = flicker(reference)
        # > 0: the light decoder's frames jump more from one to the next than the reference's.
        result["flicker_excess"] = result["flicker_light"] - result["flicker_reference"]
    for name, metric in (perceptual or {}).items():
        result[name] = float(torch.as_tensor(metric(a.float(), b.float())).float().mean())
    for name, network in (features or {}).items():
        result[name] = frechet_distance(network(light), network(reference))
    return result


def compare_decoders(latents: torch.Tensor, light, reference, *, chunk_frames: int | None = None, **hooks) -> dict:
    """Decode video latents (B, F, C, h, w) with `light` and `reference` (decoders.Decoder), then
    `compare_videos`; `light` decodes in chunks of `chunk_frames` when given."""
    light_video = light.decode(latents, chunk_frames=chunk_frames)
    result = compare_videos(light_video, reference.decode(latents), **hooks)
    return {"light": light.name, "reference": reference.name, "chunk_frames": chunk_frames, **result}
