"""Encoded images built in memory, for requests and datasets."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def encode_image(image: Image.Image, image_format: str, **options: Any) -> bytes:
    """The bytes of ``image`` saved as ``image_format`` (``JPEG``, ``PNG``, ...) with options."""
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    """Encode an RGB array as JPEG."""
    return encode_image(Image.fromarray(array), "JPEG", quality=quality)


def solid_image(colour: tuple[int, int, int], image_format: str) -> bytes:
    """A 16 x 16 RGB image of one colour, encoded as ``image_format``."""
    return encode_image(Image.new("RGB", (16, 16), colour), image_format)
