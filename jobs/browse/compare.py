"""The second image a sample page puts beside a sample's own, as the output's kind declares it
(`JobKind.comparison`): a decode of the sample's latents by the model's VAE (encode), or the image of
the same key in the output the job read (redecode).
"""

from __future__ import annotations

import threading

import numpy as np

from jobs.browse.media import MediaError, load_latents, png_bytes, read_file
from jobs.kinds import KINDS
from jobs.kinds.base import Comparison
from pipelines.config import MODEL_VAE, StorageConfig
from pipelines.models.decoding import load_decoder
from pipelines.sample_access import manifest_row
from pipelines.sinks.layout import OutputLayout


def comparison_of(job: dict) -> Comparison | None:
    """The comparison the kind of the output's job record declares (None: a kind without one, or one
    this version does not know)."""
    kind = KINDS.get((job.get("spec") or {}).get("kind", "generate"))
    return kind.comparison if kind is not None else None


class LatentDecoder:
    """The job's encoder VAE, loaded once on first use (CPU, float32)."""

    def __init__(self, job: dict):
        spec = job.get("spec") or {}
        self.reference = (spec.get("model") or {}).get("reference")
        self.encoder = spec.get("encoder") or MODEL_VAE
        self._vae = None
        self._lock = threading.Lock()

    def decode_png(self, latents: np.ndarray) -> bytes:
        # torch and diffusers load only when a page asks for a decode: the server starts without them.
        import torch

        with self._lock:
            if self._vae is None:
                self._vae = load_decoder(self.encoder, self.reference, "cpu", "float32")
            images = self._vae.decode(torch.tensor(latents, dtype=torch.float32)[None])
        return png_bytes((images[0] * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())

    def image_of(self, layout: OutputLayout, row: dict) -> bytes:
        try:
            return self.decode_png(load_latents(layout, row))
        except MediaError:
            raise
        except Exception as exc:
            raise MediaError(f"decoding {row['key']}'s latents with {self.encoder} of {self.reference!r}: "
                             f"{type(exc).__name__}: {exc}") from None


def source_image(job: dict, storage: StorageConfig | None, key: str) -> bytes:
    """A redecode sample's image in the output its latents came from (same key)."""
    url = ((job.get("spec") or {}).get("input") or {}).get("url")
    if not url:
        raise MediaError("the job record names no input output")
    try:
        source = OutputLayout(url, storage)
        row = manifest_row(source, key)
        ext = row.get("format") or "png"
        return read_file(source, {**row, "status": row.get("status")}, ext)
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError(f"the source output {url} cannot be read: {type(exc).__name__}: {exc}") from None
