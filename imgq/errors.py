"""Every error code the service itself can show a client, each defined once.

The root, ``ImgqError``, and the library's codes (bad images, archives, datasets, unknown
models) are in ``ml/errors.py``, since the library must not depend on the service; they are
re-exported here so that service code imports every error from one module. The API answers
any of them as ``{"error": {"code", "message", "details"?}}`` with the class's status; a worker
stores the same object on the job it fails (``workers.outcomes``). The README's error tables
list exactly these classes, and ``tests/test_error_codes.py`` keeps the two in step.
"""

from __future__ import annotations

from typing import Any, Self

from ml.errors import (
    ArchiveTooLarge,
    DatasetLimitExceeded,
    DatasetNotFound,
    DatasetVersionNotFound,
    DecompressionBomb,
    ImageNotFound,
    ImagePurged,
    ImageTooLarge,
    ImgqError,
    InvalidArchive,
    InvalidBase,
    InvalidDataset,
    InvalidImage,
    ModelNotFound,
    NotFound,
    NothingNew,
    VersionNotFound,
    WeightsNotFound,
)

__all__ = [
    "ArchiveTooLarge",
    "Conflict",
    "DatasetLimitExceeded",
    "DatasetNotFound",
    "DatasetVersionNotFound",
    "DeadlineExceeded",
    "DecompressionBomb",
    "ExportFailed",
    "ExportNotFound",
    "ExportNotSupported",
    "Forbidden",
    "HeadersTooLarge",
    "HttpError",
    "IdempotencyConflict",
    "ImageNotFound",
    "ImagePurged",
    "ImageTooLarge",
    "ImagesNotRetained",
    "ImgqError",
    "InternalError",
    "InvalidArchive",
    "InvalidBase",
    "InvalidCallbackUrl",
    "InvalidDataset",
    "InvalidImage",
    "InvalidRequest",
    "JobNotCancelable",
    "JobNotFound",
    "JobNotSucceeded",
    "MethodNotAllowed",
    "ModelLoadFailed",
    "ModelNotFound",
    "NotFound",
    "NotImplementedByServer",
    "NothingNew",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RateLimited",
    "ReservedModelName",
    "ServiceUnavailable",
    "TimeLimit",
    "TooManyImages",
    "TrainingFailed",
    "Unauthorized",
    "UnsupportedMediaType",
    "UriTooLong",
    "ValidationFailed",
    "VersionIsActive",
    "VersionNotFound",
    "WebhookNotDue",
    "WeightsNotFound",
    "WorkerLost",
    "http_error_class",
]


# --- answers to requests -------------------------------------------------------------------


class InvalidRequest(ImgqError):
    """The request is malformed (missing parts, bad JSON, bad base64)."""

    code = "invalid_request"
    status = 400


class TooManyImages(ImgqError):
    """A job carries more images than ``max_images_per_job``."""

    code = "too_many_images"
    status = 400


class ReservedModelName(ImgqError):
    """The built-in model cannot be fine-tuned into; pick another name."""

    code = "reserved_model_name"
    status = 400


class InvalidCallbackUrl(ImgqError):
    """The callback URL is not one imgq will call."""

    code = "invalid_callback_url"
    status = 400


class ExportNotSupported(ImgqError):
    """Built-in versions have no trained files or test split to export and check."""

    code = "export_not_supported"
    status = 400


class Unauthorized(ImgqError):
    """No key, or a key that matches none configured."""

    code = "unauthorized"
    status = 401


class Forbidden(ImgqError):
    """The key is valid but its role may not do this."""

    code = "forbidden"
    status = 403


class JobNotFound(NotFound):
    """No job with that id (or not the caller's: the two are answered alike)."""

    code = "job_not_found"


class ExportNotFound(NotFound):
    """That export has not been made (yet)."""

    code = "export_not_found"


class MethodNotAllowed(ImgqError):
    """The path exists, but not with this HTTP method."""

    code = "method_not_allowed"
    status = 405


class Conflict(ImgqError):
    """The request conflicts with the resource's state (base of the specific 409s)."""

    code = "conflict"
    status = 409


class JobNotCancelable(Conflict):
    """The job has ended, or is a predict job already running."""

    code = "job_not_cancelable"


class WebhookNotDue(Conflict):
    """Redelivery asked for a job whose webhook was never due (it has not ended)."""

    code = "webhook_not_due"


class VersionIsActive(Conflict):
    """The version to delete is the one the model serves; activate another first."""

    code = "version_is_active"


class JobNotSucceeded(Conflict):
    """Feedback for a job that has not succeeded (still running, failed or canceled)."""

    code = "job_not_succeeded"


class ImagesNotRetained(Conflict):
    """``add_to_dataset`` for a job whose images were not kept (or are kept no longer)."""

    code = "images_not_retained"


class IdempotencyConflict(Conflict):
    """The key was used before with a different request."""

    code = "idempotency_conflict"


class PayloadTooLarge(ImgqError):
    """The request body is over ``IMGQ_MAX_REQUEST_BYTES`` (``IMGQ_MAX_DATASET_BYTES``)."""

    code = "payload_too_large"
    status = 413


class UriTooLong(ImgqError):
    """The request line is over the server's limit (answered by gunicorn)."""

    code = "uri_too_long"
    status = 414


class UnsupportedMediaType(ImgqError):
    """The request body is neither of the content types an endpoint accepts."""

    code = "unsupported_media_type"
    status = 415


class ValidationFailed(ImgqError):
    """A field fails its schema, or an unknown field was sent (``details`` names them)."""

    code = "validation_error"
    status = 422


class RateLimited(ImgqError):
    """Too many requests; retry after the time the answer says."""

    code = "rate_limited"
    status = 429
    retry_after_s: float = 1.0
    """Seconds the client should wait (the ``Retry-After`` header)."""

    @classmethod
    def after(cls, seconds: float, message: str, details: Any = None) -> Self:
        """The error, telling the client to retry in ``seconds``."""
        error = cls(message, details)
        error.retry_after_s = seconds
        return error


class QuotaExceeded(RateLimited):
    """The client has as much in flight as its quota allows (jobs, images, bytes, long jobs)."""

    code = "quota_exceeded"


class HeadersTooLarge(ImgqError):
    """The request headers are too many or too large (answered by gunicorn)."""

    code = "headers_too_large"
    status = 431


class InternalError(ImgqError):
    """Something unexpected failed; the answer leaks nothing, the log has the traceback."""

    code = "internal_error"
    status = 500


class NotImplementedByServer(ImgqError):
    """A transfer coding the server does not support (answered by gunicorn)."""

    code = "not_implemented"
    status = 501


class ServiceUnavailable(ImgqError):
    """Redis or the broker cannot be reached; the client should retry later."""

    code = "service_unavailable"
    status = 503


def http_error_class(status: int) -> type[ImgqError] | None:
    """The error class of a bare HTTP status (werkzeug's, webargs', gunicorn's own answers).

    None for a status with no class of its own; callers answer those as ``HttpError`` (from
    the app) or as ``invalid_request`` / ``internal_error`` (gunicorn's parse errors).
    """
    return next((cls for cls in _HTTP_STATUS_CLASSES if cls.status == status), None)


class HttpError(ImgqError):
    """Any other HTTP error werkzeug raises (a 416 on a range request); keeps its status."""

    code = "http_error"
    status = 400


# --- why a job failed (stored on the job, never an HTTP answer) ----------------------------


class ModelLoadFailed(ImgqError):
    """A registered version's files cannot be loaded; jobs pinned to it fail with this code."""

    code = "model_load_failed"
    status = 500


class WorkerLost(ImgqError):
    """The worker running a long job stopped beating (it crashed or was killed)."""

    code = "worker_lost"
    status = 500

    @classmethod
    def after_silence(cls, silent_for_s: float) -> WorkerLost:
        """The error of a job whose heartbeat stopped ``silent_for_s`` ago."""
        return cls(
            f"The worker running this job stopped responding for {silent_for_s:.0f} s "
            "(it crashed or was killed). Nothing was published; submit the job again."
        )


class DeadlineExceeded(ImgqError):
    """A predict job was still open ``IMGQ_PREDICT_DEADLINE_S`` after it was accepted."""

    code = "deadline_exceeded"
    status = 500

    @classmethod
    def after(cls, deadline_s: float) -> DeadlineExceeded:
        """The error of a job still open ``deadline_s`` after it was accepted."""
        return cls(f"The job did not finish within {deadline_s:g} s; submit it again.")


class TimeLimit(ImgqError):
    """A fine-tune or export ran past ``IMGQ_TRAIN_TIME_LIMIT_S``."""

    code = "time_limit"
    status = 500

    @classmethod
    def after(cls, limit_s: float) -> TimeLimit:
        """The error of a job stopped at ``limit_s``."""
        return cls(f"The job ran past its time limit of {limit_s:g} s.")


class TrainingFailed(ImgqError):
    """A fine-tune crashed on something other than its input; the worker log has why."""

    code = "training_failed"
    status = 500

    def __init__(
        self,
        message: str = "Training failed unexpectedly; see the worker logs.",
        details: Any = None,
    ) -> None:
        super().__init__(message, details)


class ExportFailed(ImgqError):
    """An export crashed on something other than its input; the worker log has why."""

    code = "export_failed"
    status = 500

    def __init__(
        self,
        message: str = "The export failed unexpectedly; see the worker logs.",
        details: Any = None,
    ) -> None:
        super().__init__(message, details)


_HTTP_STATUS_CLASSES: tuple[type[ImgqError], ...] = (
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UriTooLong,
    UnsupportedMediaType,
    ValidationFailed,
    RateLimited,
    HeadersTooLarge,
    InternalError,
    NotImplementedByServer,
    ServiceUnavailable,
)
"""The generic class of each status, for answers that carry no imgq error of their own."""
