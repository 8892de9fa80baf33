"""Read stages: fetch what a sample points at from the input (images, stored latents), on CPUs.

They run before the GPU stage of their chain so that GPUs never wait on storage or image decoding.
An input that is there but unusable (an empty file, a truncated JPEG, text named .png, an image over
`input.max_pixels`) is *rejected*: recorded with its reason, not retried. Images are loaded by
pipelines/sources/pixels.py alone (bit depth, orientation, colour profile, transparency, frames).
Storage errors raise and are retried like any failure.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipelines.config import ImageConfig, StorageConfig
from pipelines.sources.conditioning import render_builtin
from pipelines.sources.fetch import read_member, read_members
from pipelines.sources.pixel_rules import DEFAULT_MAX_PIXELS, PixelRules
from pipelines.sources.pixels import load_pixels, readable_reason


def fit_image(image: Image.Image, size: ImageConfig) -> Image.Image | str:
    """The image at (width, height), or the reason it cannot be (`resize: refuse`)."""
    target = (size.width, size.height)
    if image.size == target:
        return image
    if size.resize == "refuse":
        return f"image is {image.size[0]}x{image.size[1]}, expected {target[0]}x{target[1]} (image.resize: refuse)"
    scale = max(target[0] / image.size[0], target[1] / image.size[1])
    resized = image.resize((max(target[0], round(image.size[0] * scale)), max(target[1], round(image.size[1] * scale))),
                           Image.Resampling.BICUBIC)
    left, top = (resized.size[0] - target[0]) // 2, (resized.size[1] - target[1]) // 2
    return resized.crop((left, top, left + target[0], top + target[1]))


class ReadImages:
    """samples -> uint8 sRGB pixels (B, H, W, 3) at the spec's size; unusable inputs rejected. The
    kept samples go along (`samples`) for stages that need more than their keys (a clip's seed), and
    what loading found in each input (`input_facts`, pipelines/sources/pixels.py) to its manifest row."""

    def __init__(self, image: ImageConfig, storage: StorageConfig | None = None, background: str = "white",
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.image, self.storage = image, storage
        self.rules = PixelRules.of(background, max_pixels)

    def __call__(self, batch: dict) -> dict:
        kept, pixels, rejected, facts = [], [], {}, {}
        datas = read_members(batch["samples"], "image", self.storage, return_errors=True)
        for sample, data in zip(batch["samples"], datas):
            loaded = readable_reason(str(data)) if isinstance(data, Exception) else load_pixels(data, self.rules)
            image = loaded if isinstance(loaded, str) else fit_image(Image.fromarray(loaded.pixels), self.image)
            if isinstance(image, str):
                rejected[sample["key"]] = image
                continue
            kept.append(sample)
            pixels.append(np.asarray(image, dtype=np.uint8))
            facts[sample["key"]] = loaded.facts
        return {**pixel_batch(kept, pixels, self.image, rejected), "input_facts": facts}


def pixel_batch(samples: list[dict], pixels: list[np.ndarray], size: ImageConfig, rejected: dict | None = None) -> dict:
    empty = np.zeros((0, size.height, size.width, 3), np.uint8)
    return {"keys": [s["key"] for s in samples], "samples": samples,
            "pixels": np.stack(pixels) if pixels else empty, "rejected": rejected or {}}


class RenderBuiltinImages:
    """samples of `input: {builtin: N}` -> their built-in images (pipelines/sources/conditioning.py)."""

    def __init__(self, image: ImageConfig):
        self.image = image

    def __call__(self, batch: dict) -> dict:
        samples = batch["samples"]
        pixels = [render_builtin(s["source"]["builtin"], self.image.height, self.image.width) for s in samples]
        return pixel_batch(samples, pixels, self.image)


class ReadLatents:
    """samples of a latentmill output that kept its latents -> float32 latents (B, C, h, w)."""

    def __init__(self, storage: StorageConfig | None = None):
        self.storage = storage

    def __call__(self, batch: dict) -> dict:
        latents = [np.load(io.BytesIO(read_member(s, "latent.npy", self.storage)), allow_pickle=False)
                   for s in batch["samples"]]
        return {"keys": list(batch["keys"]), "latents": np.stack(latents).astype(np.float32)}
