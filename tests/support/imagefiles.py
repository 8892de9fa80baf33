"""Image files as awkward as real inputs get, written here with Pillow (and by hand where Pillow
cannot write them): 16-bit colour PNGs, an ICC profile with Adobe RGB primaries, EXIF orientation,
animations, headers that claim a huge size."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

ADOBE_D50 = [(0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446)]  # r, g, b XYZ
ADOBE_GAMMA = 563 / 256


def saved(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(values: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written byte by byte (Pillow cannot write 16-bit RGB)."""
    height, width = values.shape[:2]
    rows = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b"")


def tiff16_rgb(values: np.ndarray) -> bytes:
    """An uncompressed little-endian 16-bit RGB TIFF written byte by byte (Pillow cannot write one)."""
    height, width = values.shape[:2]
    pixels = values.astype("<u2").tobytes()
    bits_at = 8 + len(pixels)
    ifd_at = bits_at + 6
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, bits_at), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 8), (277, 3, 1, 3), (278, 4, 1, height), (279, 4, 1, len(pixels)), (284, 3, 1, 1)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value))
        for tag, kind, count, value in entries) + struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", ifd_at) + pixels + struct.pack("<HHH", 16, 16, 16) + ifd


def landscape_jpeg(orientation: int, width: int = 40, height: int = 20) -> bytes:
    """Landscape: left half red, right half blue; EXIF says how to turn it."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return saved(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)


def s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def icc_tag(kind: bytes, payload: bytes) -> bytes:
    data = kind + b"\0\0\0\0" + payload
    return data + b"\0" * (-len(data) % 4)


def adobe_like_profile() -> bytes:
    """An ICC v2 RGB display profile with Adobe RGB (1998) primaries and gamma 2.2, written here."""
    curve = icc_tag(b"curv", struct.pack(">IH", 1, round(ADOBE_GAMMA * 256)))
    return icc_profile(b"RGB ", b"Adobe-like test RGB", {
        b"rXYZ": icc_tag(b"XYZ ", b"".join(s15(v) for v in ADOBE_D50[0])),
        b"gXYZ": icc_tag(b"XYZ ", b"".join(s15(v) for v in ADOBE_D50[1])),
        b"bXYZ": icc_tag(b"XYZ ", b"".join(s15(v) for v in ADOBE_D50[2])),
        b"rTRC": curve, b"gTRC": curve, b"bTRC": curve,
    })


def linear_grey_profile() -> bytes:
    """An ICC v2 grey profile with gamma 1.0: grey 128 is linear light, sRGB's 188."""
    return icc_profile(b"GRAY", b"linear grey", {b"kTRC": icc_tag(b"curv", struct.pack(">IH", 1, 256))})


def icc_profile(space: bytes, name: bytes, colour_tags: dict[bytes, bytes]) -> bytes:
    """An ICC v2 display profile (header, tag table, tags) over a D50 white point."""
    name += b"\0"
    tags = {
        b"desc": icc_tag(b"desc", struct.pack(">I", len(name)) + name + b"\0" * 12 + b"\0" * 67),
        b"wtpt": icc_tag(b"XYZ ", s15(0.9642) + s15(1.0) + s15(0.8249)),
        b"cprt": icc_tag(b"text", b"no copyright\0"),
        **colour_tags,
    }
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for signature, data in tags.items():
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntr" + space + b"XYZ " + b"\0" * 12
              + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def adobe_to_srgb(rgb) -> np.ndarray:
    """The colorimetric answer, from the published D65 matrices (independent of LittleCMS)."""
    to_xyz = np.array([[0.5767309, 0.1855540, 0.1881852], [0.2973769, 0.6273491, 0.0752741],
                       [0.0270343, 0.0706872, 0.9911085]])
    to_srgb = np.array([[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560],
                        [0.0556434, -0.2040259, 1.0572252]])
    linear = np.clip(to_srgb @ to_xyz @ ((np.asarray(rgb) / 255) ** ADOBE_GAMMA), 0, 1)
    encoded = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return encoded * 255


def three_frames(fmt: str, size: int = 8) -> bytes:
    """Red, green, blue frames: an animation (GIF, WebP, APNG) or a multi-page TIFF."""
    frames = [Image.new("RGB", (size, size), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    options = {"lossless": True} if fmt == "WEBP" else {}
    return saved(frames[0], fmt, save_all=True, append_images=frames[1:], **options)


def claimed_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height over a few bytes of data: decoding it would fail
    as truncated, so a size rejection proves nothing was decoded."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")
