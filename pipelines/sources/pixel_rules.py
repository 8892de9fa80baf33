"""What a spec decides about input images (background, size limit), light enough for the driver.

The spec sections (pipelines/config.py) validate and fingerprint these; the pixel work that applies
them lives in pixels.py, which loads numpy and LittleCMS only where images are read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import ImageColor

DEFAULT_MAX_PIXELS = 64_000_000


@dataclass(frozen=True)
class PixelRules:
    """What a spec decides about inputs: the background transparency sits on, the size limit."""

    background: tuple[int, int, int] = (255, 255, 255)
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def of(cls, background: str = "white", max_pixels: int = DEFAULT_MAX_PIXELS) -> PixelRules:
        return cls(parse_colour(background), max_pixels)


def pixels_identity(background: str, max_pixels: int) -> dict:
    """The input rules that decide a job's pixels, for its identity (so an output is never resumed
    with other rules): empty for the defaults, so outputs made before these rules resume as before."""
    r, g, b = parse_colour(background)
    rules = {"background": f"#{r:02x}{g:02x}{b:02x}", "max_pixels": max_pixels}
    return {} if rules == {"background": "#ffffff", "max_pixels": DEFAULT_MAX_PIXELS} else {"pixels": rules}


def parse_colour(value: str) -> tuple[int, int, int]:
    """(r, g, b) of a colour name or #rrggbb; ValueError with a readable reason otherwise."""
    if not isinstance(value, str) or not (re.fullmatch(r"#[0-9a-fA-F]{6}", value) or re.fullmatch(r"[a-zA-Z]+", value)):
        raise ValueError(f"a colour name (e.g. white) or #rrggbb, got {value!r}")
    try:
        return ImageColor.getrgb(value)[:3]
    except ValueError:
        raise ValueError(f"a colour name (e.g. white) or #rrggbb, got unknown colour {value!r}") from None
