"""Input pixels exactly as a viewer shows them: bit depth, orientation, colour profile,
transparency, frames and size limits, on real files Pillow writes (pipelines/sources/pixels.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from pipelines.sources.pixel_rules import PixelRules, parse_colour
from pipelines.sources.pixels import Loaded, load_pixels
from tests.support.imagefiles import (
    adobe_like_profile,
    adobe_to_srgb,
    claimed_png,
    landscape_jpeg,
    linear_grey_profile,
    png16,
    saved,
    three_frames,
    tiff16_rgb,
)

GRADIENT = (np.arange(16, dtype=np.uint16) * 4369).reshape(1, 16).repeat(2, 0)  # 0..65535
REPR = re.compile(r"<[^>]* at 0x|object at|0x[0-9a-f]{6,}")


def loaded(data: bytes, rules: PixelRules | None = None) -> Loaded:
    result = load_pixels(data, rules or PixelRules())
    assert isinstance(result, Loaded), result
    assert result.pixels.dtype == np.uint8 and result.pixels.ndim == 3 and result.pixels.shape[2] == 3
    return result


# -- bit depth --------------------------------------------------------------------------------

def exact8(values) -> np.ndarray:
    return np.rint(np.asarray(values, np.float64) * 255 / 65535).astype(np.uint8)


@pytest.mark.parametrize("fmt, array", [("PNG", GRADIENT), ("TIFF", GRADIENT.astype(">u2"))], ids=["I;16 png", "I;16B tiff"])
def test_16_bit_grey_is_scaled_to_8_bits_not_clipped_to_white(fmt, array):
    result = loaded(saved(Image.fromarray(array), fmt))
    assert result.facts["input_mode"] in ("I;16", "I;16B")
    for channel in range(3):
        assert (result.pixels[0, :, channel] == exact8(GRADIENT[0])).all()  # 0, 17, 34, ... 255


@pytest.mark.parametrize("fmt, channels", [("png", 3), ("png", 4), ("tiff", 3)], ids=["RGB16 png", "RGBA16 png", "RGB16 tiff"])
def test_16_bit_colour_is_scaled_exactly_from_its_raw_samples(fmt, channels):
    ramp = np.arange(0, 65536, 1021, dtype=np.uint16)[:64].reshape(1, 64).repeat(2, 0)  # low bytes matter here
    values = np.stack([ramp, 65535 - ramp, ramp // 3, np.full_like(ramp, 65535)][:channels], -1)
    result = loaded(png16(values, {3: 2, 4: 6}[channels]) if fmt == "png" else tiff16_rgb(values))
    assert result.facts["input_mode"] in ("RGB;16", "RGBA;16")
    for channel in range(3):
        # Pillow alone gives the high byte, v >> 8: 1 level off for almost all of these values.
        assert (result.pixels[0, :, channel] == exact8(values[0, :, channel])).all()
    assert (exact8(ramp) != ramp >> 8).sum() > 20


def test_32_bit_images_are_scaled_when_their_range_is_known_and_rejected_otherwise():
    as_int = loaded(saved(Image.fromarray(GRADIENT.astype(np.int32)), "TIFF"))
    assert as_int.facts["input_mode"] == "I" and (as_int.pixels[0, :, 0] == exact8(GRADIENT[0])).all()
    unit = (GRADIENT / 65535).astype(np.float32)
    as_float = loaded(saved(Image.fromarray(unit), "TIFF"))
    assert as_float.facts["input_mode"] == "F" and (as_float.pixels[0, :, 1] == exact8(GRADIENT[0])).all()
    assert "no known scale" in load_pixels(saved(Image.fromarray(GRADIENT.astype(np.int32) * 4), "TIFF"))
    assert "no known scale" in load_pixels(saved(Image.fromarray(unit * 10), "TIFF"))


# -- orientation ------------------------------------------------------------------------------


def is_red(pixel) -> bool:
    return pixel[0] > 200 and pixel[2] < 60


@pytest.mark.parametrize("orientation, size, red_at", [
    (1, (20, 40), (10, 5)),   # as stored: red on the left
    (2, (20, 40), (10, 35)),  # mirrored: red on the right
    (3, (20, 40), (10, 35)),  # upside down: red on the right
    (6, (40, 20), (5, 10)),   # shot in portrait, turned 90 degrees clockwise: red on top
    (8, (40, 20), (35, 10)),  # turned counter-clockwise: red at the bottom
])
def test_exif_orientation_is_applied(orientation, size, red_at):
    result = loaded(landscape_jpeg(orientation))
    assert result.pixels.shape[:2] == size and result.facts["input_orientation"] == orientation
    assert is_red(result.pixels[red_at])


# -- colour profiles --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_an_embedded_profile_is_converted_to_srgb(fmt):
    colour = (60, 160, 90)
    expected = adobe_to_srgb(colour)
    assert np.abs(expected - colour).max() > 20  # the profile matters for this colour
    data = saved(Image.new("RGB", (8, 8), colour), fmt, icc_profile=adobe_like_profile(), **({"quality": 100} if fmt == "JPEG" else {}))
    result = loaded(data)
    assert np.abs(result.pixels[4, 4].astype(float) - expected).max() <= 3, (result.pixels[4, 4], expected)
    assert result.facts["input_icc"] == "Adobe-like test RGB"
    plain = loaded(saved(Image.new("RGB", (8, 8), colour), fmt, **({"quality": 100} if fmt == "JPEG" else {})))
    assert np.abs(plain.pixels[4, 4].astype(int) - colour).max() <= 2 and plain.facts["input_icc"] == ""  # assumed sRGB


def test_a_profile_keeps_transparency_for_compositing():
    rgba = Image.new("RGBA", (4, 4), (60, 160, 90, 0))
    result = loaded(saved(rgba, "PNG", icc_profile=adobe_like_profile()))
    assert (result.pixels == 255).all() and result.facts["input_alpha"] is True


@pytest.mark.parametrize("mode, value", [("L", 128), ("LA", (128, 255))])
def test_a_grey_profile_is_converted_to_srgb_with_or_without_alpha(mode, value):
    result = loaded(saved(Image.new(mode, (4, 4), value), "PNG", icc_profile=linear_grey_profile()))
    assert np.abs(result.pixels[0, 0].astype(int) - 188).max() <= 2 and result.facts["input_icc"] == "linear grey"


def test_an_unusable_profile_is_a_rejection_not_a_guess():
    reason = load_pixels(saved(Image.new("RGB", (4, 4)), "PNG", icc_profile=b"not a profile at all" * 8))
    assert isinstance(reason, str) and "ICC profile" in reason and not REPR.search(reason)


# -- transparency -----------------------------------------------------------------------------

def transparent_inputs() -> dict[str, bytes]:
    """Fully transparent pixels whose hidden colour is blue (or black) in every kind of alpha."""
    rgba = Image.new("RGBA", (6, 6), (0, 0, 255, 0))
    palette = Image.new("P", (6, 6), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pa = Image.new("PA", (6, 6), (1, 0))
    pa.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    return {
        "RGBA png": saved(rgba, "PNG"),
        "LA png": saved(Image.new("LA", (6, 6), (0, 0)), "PNG"),
        "P gif transparent index": saved(palette, "GIF", transparency=1),
        "P png transparent index": saved(palette, "PNG", transparency=1),
        "PA tiff": saved(pa, "TIFF"),
        "RGBA webp": saved(rgba, "WEBP", lossless=True),
    }


@pytest.mark.parametrize("name", list(transparent_inputs()))
def test_transparency_is_composited_on_the_background(name):
    data = transparent_inputs()[name]
    assert (loaded(data).pixels == 255).all()  # default white: never black, never the hidden blue
    result = loaded(data, PixelRules.of("#102030"))
    assert (result.pixels == (16, 32, 48)).all() and result.facts["input_alpha"] is True


def test_half_transparency_blends_and_opaque_images_say_no_alpha():
    half = loaded(saved(Image.new("RGBA", (2, 2), (255, 0, 0, 128)), "PNG"), PixelRules.of("black"))
    assert tuple(half.pixels[0, 0]) == (128, 0, 0)
    assert loaded(saved(Image.new("RGB", (2, 2)), "PNG")).facts["input_alpha"] is False


def test_background_accepts_names_and_hex_and_refuses_the_rest():
    assert parse_colour("white") == (255, 255, 255) and parse_colour("#FF8000") == (255, 128, 0)
    for bad in ("#12345", "rgb(1,2,3)", "nocolour", ""):
        with pytest.raises(ValueError, match="colour name"):
            parse_colour(bad)


# -- frames -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG", "TIFF"], ids=["gif", "webp", "apng", "multipage tiff"])
def test_animations_and_multipage_files_give_their_first_frame_and_say_so(fmt):
    result = loaded(three_frames(fmt))
    assert result.facts["input_frames"] == 3 and result.facts["input_frame_used"] == 0
    assert tuple(result.pixels[4, 4]) == (255, 0, 0)


# -- size limit -------------------------------------------------------------------------------


@pytest.mark.parametrize("width, height", [(9000, 8000), (100_000, 100_000)], ids=["72MP", "over Pillow's own limit"])
def test_an_image_over_max_pixels_is_rejected_with_its_size_before_decoding(width, height):
    reason = load_pixels(claimed_png(width, height))
    assert isinstance(reason, str) and f"{width}x{height}" in reason and "input.max_pixels (64,000,000)" in reason
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's setting is left as it was


def test_max_pixels_is_the_specs_limit():
    data = saved(Image.new("RGB", (100, 50)), "PNG")
    assert isinstance(load_pixels(data, PixelRules(max_pixels=5000)), Loaded)
    assert "100x50" in load_pixels(data, PixelRules(max_pixels=4999))


# -- rejections read as sentences ----------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"plain text, named .png", saved(Image.new("RGB", (64, 64)), "JPEG")[:300],
                                  saved(Image.new("RGB", (64, 64)), "PNG")[:60], b"\x89PNG\r\n\x1a\n" + b"\0" * 40],
                         ids=["empty", "text", "truncated jpeg", "truncated png", "broken png header"])
def test_unreadable_bytes_are_rejected_with_a_reason_and_no_object_repr(data):
    reason = load_pixels(data)
    assert isinstance(reason, str) and reason and not REPR.search(reason), reason
