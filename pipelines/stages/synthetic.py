"""A stand-in for a model stage: spends a profile's per-item time and emits small real payloads.

It sleeps instead of computing, so dozens of "GPU" actors fit on a 2-core machine, and the time a
batch takes is known exactly: what the scheduler benchmark (jobs/bench/scheduler.py) needs to
compare the engine against the ideal. It keeps the batch contract of pipelines/pipeline.py: a
middle stage returns latents-sized arrays, a last stage returns a small PNG per sample.

A per-item time can change from a given sample index on (`changes`), which is how a drift in
measured rates is produced deterministically (the plan fixes which samples come late).
"""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image


def tiny_png(index: int, size: int) -> bytes:
    """A real PNG, different per sample, cheap to make."""
    pixels = np.full((size, size, 3), index % 251, dtype=np.uint8)
    pixels[0, 0] = (index >> 16) % 256, (index >> 8) % 256, index % 256
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class SyntheticStage:
    """`per_item_s`: seconds one sample takes on one device; `emits`: "latents" or "files".

    `changes`: ((from_index, per_item_s), ...) in index order, later per-item times for samples
    from that plan index on. `time_scale` multiplies every time (a benchmark's fast-forward).
    """

    def __init__(self, per_item_s: float, emits: str = "latents", *, changes: tuple = (), time_scale: float = 1.0,
                 latent_shape: tuple = (4, 8, 8), image_size: int = 8):
        if emits not in ("latents", "files"):
            raise ValueError(f"emits: expected 'latents' or 'files', got {emits!r}")
        self.per_item_s, self.changes, self.time_scale = per_item_s, tuple(changes), time_scale
        self.emits, self.latent_shape, self.image_size = emits, tuple(latent_shape), image_size

    def item_seconds(self, index: int) -> float:
        seconds = self.per_item_s
        for from_index, later in self.changes:
            if index >= from_index:
                seconds = later
        return seconds * self.time_scale

    def __call__(self, batch: dict) -> dict:
        # The first stage gets the plan's samples; later ones get the indices this stage passes on.
        indices = batch["indices"] if "indices" in batch else [s["index"] for s in batch["samples"]]
        time.sleep(sum(self.item_seconds(i) for i in indices))
        keys = batch["keys"]
        if self.emits == "latents":
            latents = np.zeros((len(keys), *self.latent_shape), dtype=np.float16)
            return {"keys": keys, "indices": indices, "latents": latents}
        files = [{"png": tiny_png(i, self.image_size)} for i in indices]
        fields = [{"height": self.image_size, "width": self.image_size}] * len(keys)
        return {"keys": keys, "files": files, "fields": fields}
