"""The errors the library raises, each with a stable ``code`` a client may see.

This is the root of imgq's one exception hierarchy: ``ImgqError`` carries a stable ``code``, an
HTTP ``status`` (how a caller should classify it: the request's fault or the server's), a
message and optional details. It lives in the library because the library must not depend on
the service (``imgq/``, ``api/``, ``workers/``); the service's own codes are in
``imgq/errors.py``, subclasses of the same root. The API turns any of them into
``{"error": {"code", "message", "details"?}}`` and workers store the same shape on a failed job.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Self


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

    def with_details(self, **details: Any) -> Self:
        """A copy whose details also say, for example, which image of a job was at fault."""
        extended = copy.copy(self)
        extended.details = {**(self.details or {}), **details}
        return extended


class NotFound(ImgqError):
    """A job, model or version that does not exist (or is not the caller's)."""

    code = "not_found"
    status = 404


class ModelNotFound(NotFound):
    """No model with that name in the registry."""

    code = "model_not_found"


class VersionNotFound(NotFound):
    """The model exists but not that version."""

    code = "version_not_found"


class DatasetNotFound(NotFound):
    """No dataset with that name (or not the caller's)."""

    code = "dataset_not_found"


class DatasetVersionNotFound(NotFound):
    """The dataset exists but not that version."""

    code = "dataset_version_not_found"


class ImageNotFound(NotFound):
    """No image with that SHA-256 in the dataset."""

    code = "image_not_found"


class ImagePurged(ImgqError):
    """The image's bytes were removed for good at the owner's request; it cannot come back."""

    code = "image_purged"
    status = 410


class DatasetLimitExceeded(ImgqError):
    """A dataset would hold more images or bytes than ``IMGQ_MAX_DATASET_IMAGES`` or
    ``IMGQ_MAX_DATASET_STORE_BYTES`` allow."""

    code = "dataset_limit_exceeded"
    status = 413


class NothingNew(ImgqError):
    """A retrain of a model whose dataset has not changed since its active version."""

    code = "nothing_new"
    status = 409


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


class InvalidArchive(ImgqError):
    """The upload is not a readable zip or tar, or one of its members is unsafe to extract."""

    code = "invalid_archive"
    status = 400


class ArchiveTooLarge(ImgqError):
    """The archive has too many entries, too many bytes, or compresses suspiciously well."""

    code = "archive_too_large"
    status = 413


class InvalidDataset(ImgqError):
    """The files do not form a usable classification dataset."""

    code = "invalid_dataset"
    status = 400


class InvalidBase(ImgqError):
    """``base`` names neither a backbone nor an existing ``model:version``."""

    code = "invalid_base"
    status = 400


class InvalidTeacher(ImgqError):
    """``teacher`` is not a trained version with the dataset's classes."""

    code = "invalid_teacher"
    status = 400


class WeightsNotFound(ImgqError):
    """Pretrained weights are neither cached nor configured; nothing is downloaded at run time."""

    code = "weights_not_found"
    status = 500
