"""Image decoding for every model: bytes in, fixed-size RGB uint8 arrays out.

Pillow only (no TensorFlow), so the API can run the same checks the workers do. Decoding is
guarded in three places: the pixel count is checked from the header before any pixel is
decoded (decompression bombs), truncated files raise instead of being padded with grey, and
JPEGs are decoded at a reduced scale when the target is much smaller (Pillow's draft mode),
which is most of the decode time saved on large photos.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from ml.errors import DecompressionBomb, ImageTooLarge, InvalidImage


@dataclass(frozen=True)
class ImageLimits:
    """Bounds every decoded image must respect."""

    max_bytes: int
    max_pixels: int


def _open(image_bytes: bytes, limits: ImageLimits) -> Image.Image:
    if not image_bytes:
        raise InvalidImage("The image is empty (zero bytes).")
    if len(image_bytes) > limits.max_bytes:
        raise ImageTooLarge(
            f"The image is {len(image_bytes)} bytes; the limit is {limits.max_bytes}.",
            {"size": len(image_bytes), "limit": limits.max_bytes},
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(image_bytes))
    except (
        UnidentifiedImageError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as exc:
        if isinstance(exc, Image.DecompressionBombWarning | Image.DecompressionBombError):
            raise DecompressionBomb(f"The image declares too many pixels: {exc}") from exc
        raise InvalidImage("The bytes are not an image in a format imgq reads.") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"The image header is corrupt: {exc}") from exc
    width, height = image.size
    if width * height > limits.max_pixels or width < 1 or height < 1:
        raise DecompressionBomb(
            f"The image is {width}x{height} pixels; the limit is {limits.max_pixels} pixels.",
            {"width": width, "height": height, "limit": limits.max_pixels},
        )
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode (palette, alpha, CMYK, 16-bit, grey) to 8-bit RGB on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = float(array.max()) or 1.0
        image = Image.fromarray((array * (255.0 / top)).clip(0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(
    image_bytes: bytes, size: tuple[int, int], limits: ImageLimits
) -> NDArray[np.uint8]:
    """Decode, orient and resize one image to ``size`` (height, width) as RGB uint8.

    Args:
        image_bytes: an encoded image (JPEG, PNG, GIF, WebP, BMP, TIFF...).
        size: target ``(height, width)``.
        limits: byte and pixel bounds.

    Returns:
        An array of shape ``(height, width, 3)``.

    Raises:
        InvalidImage: not an image, or truncated / corrupt.
        DecompressionBomb: more pixels than ``limits.max_pixels``.
        ImageTooLarge: more bytes than ``limits.max_bytes``.
    """
    image = _open(image_bytes, limits)
    height, width = size
    try:
        if image.format == "JPEG":
            image.draft("RGB", (width * 2, height * 2))
        image.load()
        image = ImageOps.exif_transpose(image) or image
        image = _to_rgb(image)
        image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"The image could not be decoded: {exc}") from exc
    return np.asarray(image, dtype=np.uint8)


def check_image(image_bytes: bytes, limits: ImageLimits) -> None:
    """Reject what is certainly not a usable image, cheaply, before a job is queued.

    Decodes at the smallest scale Pillow offers so a truncated or corrupt file is caught at
    the API with a clear error instead of failing the job later.
    """
    decode_image(image_bytes, (8, 8), limits)
