"""The content types of the images imgq decodes, for everything that names them.

``ml.preprocess.SERVED_FORMATS`` are the formats the decoder accepts; these are their media
types, as a client sends them as a whole request body (``POST /jobs/predict`` with
``Content-Type: image/jpeg``) and as the API documents them.
"""

from __future__ import annotations

IMAGE_MEDIA_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/tiff",
)
"""One per served format: JPEG, PNG, WebP, GIF, BMP, TIFF."""
