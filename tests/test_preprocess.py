"""Image decoding: every mode becomes RGB, orientation is honoured, bad input has clear codes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgq.errors import DecompressionBomb, ImageTooLarge, InvalidImage
from ml.preprocess import ImageLimits, check_image, decode_image
from tests.support.images import encode_image

LIMITS = ImageLimits(max_bytes=1_000_000, max_pixels=4_000_000)


def _red(mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", (40, 30), (220, 20, 20)).convert(mode)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "JPEG"),
        ("L", "PNG"),
        ("P", "GIF"),
        ("RGBA", "PNG"),
        ("CMYK", "JPEG"),
        ("RGB", "WEBP"),
        ("LA", "PNG"),
        ("I;16", "PNG"),
        ("RGB", "BMP"),
        ("RGB", "TIFF"),
    ],
)
def test_every_mode_decodes_to_rgb_uint8_of_the_target_size(mode: str, fmt: str) -> None:
    pixels = decode_image(encode_image(_red(mode), fmt), (16, 24), LIMITS)
    assert pixels.shape == (16, 24, 3)
    assert pixels.dtype == np.uint8


def test_transparent_pixels_are_composited_on_white() -> None:
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    pixels = decode_image(encode_image(clear, "PNG"), (8, 8), LIMITS)
    assert (pixels == 255).all()


def test_exif_orientation_is_applied() -> None:
    wide = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = wide.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode_image(wide, "JPEG", exif=exif)
    pixels = decode_image(data, (60, 20), LIMITS)
    assert pixels.shape == (60, 20, 3)


def test_sixteen_bit_grey_keeps_its_contrast() -> None:
    ramp = Image.fromarray(np.tile(np.linspace(0, 4000, 32, dtype=np.uint16), (8, 1)))
    pixels = decode_image(encode_image(ramp, "PNG"), (8, 32), LIMITS)
    assert pixels[..., 0].max() > 200 and pixels[..., 0].min() < 20


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", InvalidImage),
        (b"hello, not an image", InvalidImage),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 10, InvalidImage),
    ],
)
def test_non_images_are_invalid_image(payload: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        check_image(payload, LIMITS)


def test_truncated_jpeg_is_rejected_with_invalid_image() -> None:
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    data = encode_image(Image.fromarray(noise), "JPEG")
    with pytest.raises(InvalidImage):
        check_image(data[: len(data) // 2], LIMITS)


def test_truncated_png_is_rejected_with_invalid_image() -> None:
    noise = np.random.default_rng(1).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    data = encode_image(Image.fromarray(noise), "PNG")
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) - 200], (8, 8), LIMITS)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = encode_image(Image.new("1", (5000, 5000)), "PNG")  # a few KB, 25 megapixels
    assert len(bomb) < 100_000
    with pytest.raises(DecompressionBomb):
        check_image(bomb, LIMITS)


def test_image_over_the_byte_limit_is_too_large() -> None:
    with pytest.raises(ImageTooLarge):
        check_image(b"\x00" * (LIMITS.max_bytes + 1), LIMITS)
