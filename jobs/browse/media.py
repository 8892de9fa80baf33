"""A sample's files for the page: raw files by range read, thumbnails, latent statistics, and the
second image an encode or redecode sample is compared with.

Thumbnails are made on demand and kept in memory (an LRU of small JPEGs); nothing is written into
the output. A file that cannot be read or decoded gives a MediaError whose text the page shows.
"""

from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict

import numpy as np
from PIL import Image

from pipelines.sample_access import read_files
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.tar_offsets import file_spans

THUMB_PX = 192
IMAGE_FORMATS = ("png", "jpg", "jpeg", "webp")
CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
                 "mp4": "video/mp4", "json": "application/json", "txt": "text/plain; charset=utf-8",
                 "npy": "application/octet-stream"}


class MediaError(Exception):
    """A sample's file cannot be read or decoded; the message says which and why."""


def content_type(ext: str) -> str:
    return CONTENT_TYPES.get(ext.rsplit(".", 1)[-1], "application/octet-stream")


def read_file(layout: OutputLayout, row: dict, ext: str) -> bytes:
    """One file of a sample (one range read)."""
    if row.get("status") == "damaged":
        raise MediaError(row.get("error") or "damaged shard")
    if ext not in file_spans(row):
        raise MediaError(f"sample {row['key']} has no .{ext} file")
    one = {**row, "tar_files": _only(row, ext)}
    try:
        return read_files(layout, one)[ext]
    except Exception as exc:
        raise MediaError(f"{row['key']}.{ext}: {type(exc).__name__}: {exc}") from None


def _only(row: dict, ext: str) -> str:
    """The row's spans narrowed to one file, so that read_files reads only that one."""
    offset, size = file_spans(row)[ext]
    return json.dumps({ext: [offset, size]})


def picture_ext(row: dict) -> str | None:
    """The file a thumbnail is made from: the image, or a video's poster (else the video)."""
    spans = file_spans(row)
    for ext in (*IMAGE_FORMATS, "poster.png", "mp4"):
        if ext in spans:
            return ext
    return None


def thumbnail_from(data: bytes, ext: str, px: int = THUMB_PX) -> bytes:
    image = first_frame(data) if ext == "mp4" else Image.open(io.BytesIO(data))
    image = image.convert("RGB")
    image.thumbnail((px, px))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def first_frame(mp4: bytes) -> Image.Image:
    # lazy: keeps av out of processes that never call this
    import av

    with av.open(io.BytesIO(mp4)) as container:
        for frame in container.decode(video=0):
            return frame.to_image()
    raise MediaError("the mp4 has no frames")


class Thumbnails:
    """JPEG thumbnails by key, made from one range read and kept (LRU, `capacity` of them)."""

    def __init__(self, layout: OutputLayout, capacity: int = 4096):
        self.layout, self.capacity = layout, capacity
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, row: dict) -> bytes:
        key = row["key"]
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        ext = picture_ext(row)
        if ext is None:
            raise MediaError(row.get("error") or f"sample {key} has no image ({row.get('status')})")
        data = read_file(self.layout, row, ext)
        try:
            thumb = thumbnail_from(data, ext)
        except Exception as exc:
            raise MediaError(f"{key}.{ext} cannot be decoded: {type(exc).__name__}: {exc}") from None
        with self._lock:
            self._cache[key] = thumb
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return thumb


def latent_stats(layout: OutputLayout, row: dict) -> dict | None:
    """Shape, dtype and statistics of the sample's kept latents (None when none were kept)."""
    if "latent.npy" not in file_spans(row):
        return None
    z = load_latents(layout, row)
    values = z.astype(np.float64)
    return {"shape": list(z.shape), "dtype": str(z.dtype), "mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "max": float(values.max())}


def load_latents(layout: OutputLayout, row: dict) -> np.ndarray:
    return np.load(io.BytesIO(read_file(layout, row, "latent.npy")), allow_pickle=False)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
