"""The one exception hierarchy: each error has a stable ``code`` and an HTTP status.

The API turns any ``ImgqError`` into ``{"error": {"code", "message", "details"?}}``; workers store
the same shape on a failed job, so clients handle one format wherever an error surfaces.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ImgqError(Exception):
    """Base of all errors a client may see."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """Return the error envelope's inner object."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class InvalidRequest(ImgqError):
    """The request is malformed (missing parts, bad JSON, bad base64)."""

    code = "invalid_request"
    status = 400


class InvalidImage(ImgqError):
    """The bytes are not a decodable image (unknown format, truncated, corrupt)."""

    code = "invalid_image"
    status = 400


class DecompressionBomb(ImgqError):
    """The image decodes to more pixels than ``max_image_pixels`` allows."""

    code = "decompression_bomb"
    status = 400


class ImageTooLarge(ImgqError):
    """One encoded image is over ``max_image_bytes``."""

    code = "image_too_large"
    status = 413


class TooManyImages(ImgqError):
    """A job carries more images than ``max_images_per_job``."""

    code = "too_many_images"
    status = 400


class NotFound(ImgqError):
    """A job, model or version that does not exist (or is not the caller's)."""

    code = "not_found"
    status = 404


class JobNotFound(NotFound):
    """No job with that id."""

    code = "job_not_found"


class ModelNotFound(NotFound):
    """No model with that name in the registry."""

    code = "model_not_found"


class VersionNotFound(NotFound):
    """The model exists but not that version."""

    code = "version_not_found"


class WeightsNotFound(ImgqError):
    """Pretrained weights are neither cached nor configured; nothing is downloaded at run time."""

    code = "weights_not_found"
    status = 500


class ServiceUnavailable(ImgqError):
    """Redis or the broker cannot be reached; the client should retry later."""

    code = "service_unavailable"
    status = 503


class UnsupportedMediaType(ImgqError):
    """The request body is neither of the content types an endpoint accepts."""

    code = "unsupported_media_type"
    status = 415
