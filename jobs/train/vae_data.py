"""Training images for `kind: train-vae`: a folder of photos, random crops and flips, held-out images.

Photo folders are small (hundreds of crops): every worker holds its folder's pixels in memory.
A batch is drawn from a generator seeded by (seed, step, rank), so the batches after a resume
are exactly those an uninterrupted run draws, with no stream position to restore.
"""

from __future__ import annotations

import posixpath

import fsspec
import numpy as np

from pipelines.errors import ConfigError
from pipelines.sinks.storage import storage_options
from pipelines.sources.pixels import load_pixels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_urls(url: str, storage, field_name: str) -> list[str]:
    """The image files directly in the folder `url`, sorted by name; ConfigError naming `field_name`
    when there are none."""
    fs, root = fsspec.core.url_to_fs(url, **storage_options(url, storage))
    try:
        names = [p for p in fs.ls(root, detail=False) if p.lower().endswith(IMAGE_SUFFIXES)]
    except FileNotFoundError:
        raise ConfigError(field_name, "", detail=f"{url}: no such folder") from None
    if not names:
        raise ConfigError(field_name, "", detail=f"{url}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    protocol = url.split("://", 1)[0] + "://" if "://" in url else ""
    return [protocol + p if protocol and not p.startswith(protocol) else p for p in sorted(names)]


def load_images(urls: list[str], storage, field_name: str) -> list[np.ndarray]:
    """Each file's 8-bit sRGB pixels (H, W, 3) through the project's pixel loader; ConfigError naming
    the file when one cannot be read."""
    images = []
    for url in urls:
        with fsspec.open(url, "rb", **storage_options(url, storage)) as f:
            loaded = load_pixels(f.read())
        if isinstance(loaded, str):
            raise ConfigError(field_name, "", detail=f"{url}: {loaded}")
        images.append(loaded.pixels)
    return images


def check_crop(images: list[np.ndarray], urls: list[str], crop: int) -> None:
    for image, url in zip(images, urls):
        if min(image.shape[:2]) < crop:
            raise ConfigError("data.crop", "", detail=f"{crop} px is larger than {posixpath.basename(url)} "
                              f"({image.shape[1]}x{image.shape[0]}); every training image must hold a crop")


def trimmed(image: np.ndarray, multiple: int) -> np.ndarray:
    """The centre of `image` with both sides cut down to a multiple of `multiple` (the VAE's downsampling)."""
    h, w = (s - s % multiple for s in image.shape[:2])
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    return image[top:top + h, left:left + w]


def mean_colour(images: list[np.ndarray]) -> list[float]:
    """The mean RGB of every pixel of `images`, in [0, 1]."""
    total = sum(image.reshape(-1, 3).astype(np.float64).sum(0) for image in images)
    return [float(v) for v in total / sum(image.shape[0] * image.shape[1] for image in images) / 255.0]


def random_crops(images: list[np.ndarray], count: int, crop: int, flips: bool, rng: np.random.Generator) -> np.ndarray:
    """`count` random crop x crop patches of random `images` (flipped left-right at random): uint8 (B, crop, crop, 3)."""
    out = np.empty((count, crop, crop, 3), np.uint8)
    for i in range(count):
        image = images[rng.integers(len(images))]
        top, left = rng.integers(0, image.shape[0] - crop + 1), rng.integers(0, image.shape[1] - crop + 1)
        patch = image[top:top + crop, left:left + crop]
        out[i] = patch[:, ::-1] if flips and rng.random() < 0.5 else patch
    return out


def batch_at(images: list[np.ndarray], step: int, rank: int, seed: int, batch_size: int, crop: int,
             flips: bool) -> np.ndarray:
    """Worker `rank`'s batch for `step`: a function of (seed, step, rank) only, so a resumed run draws the same."""
    return random_crops(images, batch_size, crop, flips, np.random.default_rng([seed, step, rank]))
