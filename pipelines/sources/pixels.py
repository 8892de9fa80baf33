"""Input image bytes -> the 8-bit sRGB pixels a viewer shows, or the reason they cannot be had.

Every path that reads an input image (encode's read stage, video conditioning images) calls
`load_pixels`, so no reader converts on its own. In order:
- the header is read and the size checked against `max_pixels` before any pixel is decompressed;
- the first frame of an animated GIF/WebP/APNG or multi-page TIFF is used (and said so);
- EXIF orientation 2-8 is applied, before any resize;
- 16 bits a channel (`I;16`, `I;16B`, 16-bit RGB(A)) is scaled round(v * 255 / 65535); 32-bit
  `I` is taken as 16-bit when its values lie in 0..65535 and `F` as 0..1, otherwise rejected (no
  known scale);
- an embedded ICC profile is converted to sRGB (ImageCms); without one, sRGB is assumed;
- transparency (RGBA, LA, PA, P or L/RGB with a transparent colour) is composited on `background`;
`facts` (manifest columns `input_*`) record what was found, the same keys for every image.
"""

from __future__ import annotations

import functools
import io
import re
import struct
import sys
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from pipelines.sources.pixel_rules import PixelRules

DEFAULT_RULES = PixelRules()

SRGB = ImageCms.createProfile("sRGB")
_OPEN_LOCK = threading.Lock()  # Image.MAX_IMAGE_PIXELS is process-wide
_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


@dataclass(frozen=True)
class Loaded:
    pixels: np.ndarray  # uint8 (H, W, 3), sRGB
    facts: dict


def load_pixels(data: bytes, rules: PixelRules = DEFAULT_RULES) -> Loaded | str:
    """The image in `data` as 8-bit sRGB pixels with its facts, or why it cannot be used."""
    if not data:
        return "empty file (0 bytes)"
    try:
        image = _open_checked(data, rules.max_pixels)
        if isinstance(image, str):
            return image
        with image:
            return _convert(image, data, rules)
    except UnidentifiedImageError:
        return "not a readable image (no format Pillow knows: unknown or damaged header)"
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        return readable_reason(f"not a readable image ({type(exc).__name__}: {exc})")


def readable_reason(text: str) -> str:
    """`text` without Python object reprs (`<_io.BytesIO object at 0x...>`)."""
    return _REPR.sub("the input", text)


def _open_checked(data: bytes, max_pixels: int) -> Image.Image | str:
    # Pillow's own bomb check (warn over MAX_IMAGE_PIXELS, fail over twice that) is replaced by
    # ours on the header's size, so the limit is the spec's and the reason names the size.
    with _OPEN_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        return f"image is {width}x{height} ({width * height:,} pixels), over input.max_pixels ({max_pixels:,}); not decoded"
    return image


def _convert(image: Image.Image, data: bytes, rules: PixelRules) -> Loaded | str:
    frames = getattr(image, "n_frames", 1)
    image.seek(0)
    wide = _wide_colour(image)
    image.load()  # a truncated file fails here, not at open
    facts = {"input_mode": image.mode + (";16" if wide else ""), "input_width": image.width,
             "input_height": image.height, "input_frames": frames, "input_frame_used": 0}
    icc = image.info.get("icc_profile")
    try:
        orientation = image.getexif().get(0x0112, 1)
    except (SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error) as exc:
        return readable_reason(f"damaged EXIF data ({type(exc).__name__}: {exc})")
    facts["input_orientation"] = orientation if orientation in range(1, 9) else 1

    def upright(frame: Image.Image) -> Image.Image:  # before any resize: a portrait stays portrait
        return ImageOps.exif_transpose(frame) if facts["input_orientation"] != 1 else frame

    frame = _exact_wide_colour(upright(image), wide, data, rules, upright) if wide else _eight_bit(upright(image))
    if isinstance(frame, str):
        return frame
    frame = _explicit_alpha(frame)
    if icc:
        frame = _to_srgb(frame, icc)
        if isinstance(frame, str):
            return frame
    facts["input_icc"] = _profile_name(icc) if icc else ""
    frame, facts["input_alpha"] = _flatten(frame, rules.background)
    return Loaded(np.asarray(frame, dtype=np.uint8), facts)


# 16-bit RGB(A) (PNG, TIFF) has no Pillow mode: Pillow unpacks each sample's high byte. Decoding
# once more with the byte order swapped gives the low bytes, hence the exact value.
_SWAPPED = {"16B": "16L", "16L": "16B", "16N": "16B" if sys.byteorder == "little" else "16L"}


def _wide_colour(image: Image.Image) -> list | None:
    """The current frame's tiles, with the byte order swapped, when it is 16-bit RGB(A)."""
    swapped = []
    for tile in image.tile:
        args = tile.args if isinstance(tile.args, tuple) else (tile.args,)
        rawmode = args[0] if args and isinstance(args[0], str) else ""
        mode, _, depth = rawmode.partition(";")
        if image.mode not in ("RGB", "RGBA") or mode != image.mode or depth not in _SWAPPED:
            return None
        swapped.append(tile._replace(args=(f"{mode};{_SWAPPED[depth]}", *args[1:]) if isinstance(tile.args, tuple)
                                     else f"{mode};{_SWAPPED[depth]}"))
    return swapped or None


def _exact_wide_colour(high: Image.Image, swapped: list, data: bytes, rules: PixelRules, upright) -> Image.Image:
    """round(v * 255 / 65535) from the high bytes and a second decode that reads the low ones;
    Pillow's high bytes (at most 1 level off) if that decode is not possible. Whatever a decoder
    makes of the swapped byte order, high * 256 + low stays within 1 level of the high byte."""
    try:
        again = _open_checked(data, rules.max_pixels)
        with again:
            again.seek(0)
            again.tile = swapped
            again.load()
            low = np.asarray(upright(again)).astype(np.float64)
    except (OSError, ValueError, SyntaxError, EOFError):
        return high
    wide = np.asarray(high).astype(np.float64) * 256 + low
    return Image.fromarray(np.rint(wide * 255 / 65535).astype(np.uint8), high.mode)


def _eight_bit(image: Image.Image) -> Image.Image | str:
    """16- and 32-bit single-channel modes as 8-bit L; every other mode is 8 bits a channel."""
    if image.mode.startswith("I;16"):
        return _scaled(np.asarray(image).astype(np.float64), 65535)
    if image.mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            return (f"32-bit integer image with values {values.min()}..{values.max()}: no known scale "
                    "(0..65535 is read as 16-bit)")
        return _scaled(values.astype(np.float64), 65535)
    if image.mode == "F":
        values = np.asarray(image)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            return "32-bit float image with values outside 0..1: no known scale"
        return _scaled(values.astype(np.float64), 1)
    return image


def _explicit_alpha(image: Image.Image) -> Image.Image:
    """Palette, bilevel, premultiplied and transparent-colour images as L/LA/RGB/RGBA: alpha is a band."""
    if "transparency" in image.info:
        return image.convert("LA" if image.mode == "L" else "RGBA")
    palette_alpha = image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"
    if image.mode in ("PA", "RGBa") or palette_alpha:
        return image.convert("RGBA")
    if image.mode == "La":
        return image.convert("LA")
    return image.convert("RGB") if image.mode in ("P", "1") else image


def _scaled(values: np.ndarray, full: float) -> Image.Image:
    return Image.fromarray(np.rint(values * 255 / full).astype(np.uint8), "L")


def _to_srgb(image: Image.Image, icc: bytes) -> Image.Image | str:
    """`image` converted from its embedded profile to sRGB (alpha kept)."""
    try:
        space = _profile(icc).profile.xcolor_space.strip()
        modes = {"RGB": ("RGBA", "RGB"), "GRAY": ("LA", "L"), "CMYK": (None, "CMYK")}
        if space not in modes:
            return f"embedded ICC profile is for colour space {space}, which cannot be converted to sRGB"
        with_alpha, plain = modes[space]
        in_mode = with_alpha if with_alpha and "A" in image.getbands() else plain
        source = image if image.mode == in_mode else image.convert(in_mode)
        if in_mode == "LA":  # LittleCMS has no grey+alpha: convert the grey, put the alpha back
            rgb = ImageCms.applyTransform(source.getchannel("L"), _transform(icc, "L", "RGB"))
            rgb.putalpha(source.getchannel("A"))
            return rgb
        return ImageCms.applyTransform(source, _transform(icc, in_mode, "RGBA" if in_mode == "RGBA" else "RGB"))
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError) as exc:
        return readable_reason(f"embedded ICC profile cannot be used ({type(exc).__name__}: {exc})")


@functools.lru_cache(maxsize=16)
def _profile(icc: bytes) -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(io.BytesIO(icc))


@functools.lru_cache(maxsize=16)  # a dataset's images mostly share a few profiles
def _transform(icc: bytes, in_mode: str, out_mode: str) -> ImageCms.ImageCmsTransform:
    return ImageCms.buildTransform(_profile(icc), SRGB, in_mode, out_mode)


def _profile_name(icc: bytes) -> str:
    try:
        return ImageCms.getProfileDescription(_profile(icc)).strip() or "unnamed profile"
    except (OSError, ImageCms.PyCMSError):
        return "unnamed profile"


def _flatten(image: Image.Image, background: tuple[int, int, int]) -> tuple[Image.Image, bool]:
    """RGB `image`, transparency composited on `background`; and whether there was any."""
    if image.mode not in ("RGBA", "LA"):
        return (image if image.mode == "RGB" else image.convert("RGB")), False
    rgba = image.convert("RGBA")
    under = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(under, rgba).convert("RGB"), True

