"""Image quality metrics: PSNR, SSIM and LPIPS, on images in [0, 1] shaped (B, 3, H, W).

PSNR and SSIM are scikit-image's definitions, reimplemented in torch so they run batched on the
decoder's device: `peak_signal_noise_ratio(data_range=1)` and `structural_similarity(
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=...)`
(tests check both against scikit-image to 1e-4). PSNR of identical images is +inf, as there.

LPIPS is the `lpips` package's AlexNet variant. Its trunk weights come from torchvision's cache
(`$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`), downloaded on first use where the
internet is reachable. Where they are missing, `LPIPS()` raises `LPIPSWeightsMissing` naming the
file; it never falls back to an untrained trunk. A file whose SHA-256 does not start with the
published prefix (torchvision names files by it) gives values flagged `verified=False`: reports
label those as test-only, never as LPIPS.
"""

from __future__ import annotations

import hashlib
import math
import os

import torch
import torch.nn.functional as F

# scikit-image's SSIM constants and its Gaussian window (truncate=3.5 -> radius 5 at sigma 1.5).
SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_TRUNCATE = 0.01, 0.03, 1.5, 3.5
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
SSIM_MIN_SIZE = 2 * SSIM_RADIUS + 1

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_SHA256_PREFIX = "7be5be79"


def as_uint8_levels(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats rounded to the 256 levels a PNG in the dataset holds, back in [0, 1] (float64)."""
    return (images.double().clamp(0, 1) * 255).round() / 255


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"expected two image batches of the same shape (B, C, H, W), got {tuple(a.shape)} and {tuple(b.shape)}")


def psnr(reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Per image PSNR in dB for data range 1 (float64, +inf where the images are identical)."""
    _check_pair(reference, test)
    mse = (reference.double() - test.double()).pow(2).flatten(1).mean(1)
    with torch.no_grad():
        return torch.where(mse == 0, torch.full_like(mse, math.inf), 10 * torch.log10(1.0 / mse))


def _gaussian_window(dtype, device) -> torch.Tensor:
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return w / w.sum()


def _blur_valid(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' region only: exactly the part of scikit-image's filtered
    image that it keeps after cropping the window radius, so its border mode never matters."""
    channels = x.shape[1]
    x = F.conv2d(x, window.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, window.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def ssim(reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Per image SSIM (mean over channels of the mean SSIM map), scikit-image's definition."""
    _check_pair(reference, test)
    if min(reference.shape[-2:]) < SSIM_MIN_SIZE:
        raise ValueError(f"SSIM needs images of at least {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} pixels, got {tuple(reference.shape[-2:])}")
    x, y = reference.double(), test.double()
    window = _gaussian_window(x.dtype, x.device)
    ux, uy = _blur_valid(x, window), _blur_valid(y, window)
    vx = _blur_valid(x * x, window) - ux * ux
    vy = _blur_valid(y * y, window) - uy * uy
    vxy = _blur_valid(x * y, window) - ux * uy
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(2).mean(2).mean(1)


class LPIPSWeightsMissing(FileNotFoundError):
    """LPIPS's AlexNet trunk weights are not on this machine (and cannot be downloaded)."""


def alexnet_weights_path() -> str:
    """Where torchvision (and so lpips) looks for the AlexNet trunk: $TORCH_HOME/hub/checkpoints."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", ALEXNET_FILE)


def _missing_message(path: str) -> str:
    return (
        f"LPIPS needs the AlexNet trunk weights {ALEXNET_FILE}, expected at {path} (TORCH_HOME="
        f"{os.environ.get('TORCH_HOME', 'unset, so ~/.cache/torch')}). This machine cannot download them: copy "
        f"the file from a machine where `python -c \"import torchvision; torchvision.models.alexnet(weights='DEFAULT')\"` "
        f"ran (it lands in that machine's $TORCH_HOME/hub/checkpoints/), or fetch "
        f"https://download.pytorch.org/models/{ALEXNET_FILE}, and put it there. No LPIPS is computed without them."
    )


def require_lpips_weights() -> str:
    """The trunk weights' path, or LPIPSWeightsMissing saying where to put them."""
    path = alexnet_weights_path()
    if not os.path.isfile(path):
        raise LPIPSWeightsMissing(_missing_message(path))
    return path


def _is_published_alexnet(path: str) -> bool:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().startswith(ALEXNET_SHA256_PREFIX)


class LPIPS(torch.nn.Module):
    """The `lpips` package's AlexNet LPIPS on [0, 1] images; differentiable (usable as a loss).

    `verified` is False when the trunk file is not torchvision's published one (tests make their
    own): such values are test-only and reports must not present them as LPIPS.
    """

    def __init__(self):
        super().__init__()
        path = require_lpips_weights()
        self.verified = _is_published_alexnet(path)
        # lazy: keeps lpips out of processes that never call this
        import lpips

        # lpips's own linear heads ship inside the package; the trunk comes from the cache above.
        self.net = lpips.LPIPS(net="alex", pretrained=True, verbose=False).eval().requires_grad_(False)

    def forward(self, reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
        """Per image LPIPS distance (0 for identical images)."""
        _check_pair(reference, test)
        dtype = next(self.net.parameters()).dtype
        return self.net(reference.to(dtype) * 2 - 1, test.to(dtype) * 2 - 1).flatten()


def score(reference: torch.Tensor, test: torch.Tensor, lpips: LPIPS | None = None) -> dict[str, list[float]]:
    """Per image PSNR, SSIM (and LPIPS) of `test` against `reference`, both rounded to uint8 levels
    first, as the images in a dataset are."""
    reference, test = as_uint8_levels(reference), as_uint8_levels(test)
    out = {"psnr": psnr(reference, test).tolist(), "ssim": ssim(reference, test).tolist()}
    if lpips is not None:
        with torch.no_grad():
            # Values from unverified trunk weights never carry the name LPIPS.
            out["lpips" if lpips.verified else "lpips_test_only"] = lpips(reference.float(), test.float()).tolist()
    return out


def lpips_status(lpips: LPIPS | None) -> str:
    """One line for reports: whether the LPIPS column is LPIPS."""
    if lpips is None:
        return f"not computed: the AlexNet trunk weights are not at {alexnet_weights_path()}"
    if lpips.verified:
        return "lpips (AlexNet, published torchvision weights)"
    return "lpips_test_only: trunk weights are not torchvision's published AlexNet; not LPIPS"
