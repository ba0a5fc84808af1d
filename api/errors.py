"""One error handler for the whole API: every error leaves as the same JSON envelope.

``ImgqError`` carries its own code and status; werkzeug's HTTP errors (404 routes, 405, 413
bodies) and webargs/marshmallow validation map to stable codes; Redis or broker outages become a
``503`` with ``Retry-After``; anything else is logged with its traceback and answered with a
generic ``500`` that leaks nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, jsonify
from flask_smorest import Api
from kombu.exceptions import OperationalError
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from api.metrics import REQUESTS_REJECTED
from api.schemas import ErrorEnvelopeSchema
from imgq.errors import ImgqError, ServiceUnavailable

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5
"""Seconds a client is told to wait when a backing service is down."""

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


def error_response(status: int, code: str, message: str, details: Any = None) -> Response:
    """Build the JSON error envelope."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    response = jsonify({"error": body})
    response.status_code = status
    REQUESTS_REJECTED.labels(str(status), code).inc()
    return response


class ImgqApi(Api):
    """flask-smorest's Api with imgq's error envelope instead of its own."""

    ERROR_SCHEMA = ErrorEnvelopeSchema  # what the OpenAPI document says errors look like

    def handle_http_exception(self, error: HTTPException) -> Response:
        """Turn werkzeug and webargs HTTP errors into the envelope."""
        status = error.code or 500
        details = None
        data = getattr(error, "data", None)
        if isinstance(data, dict) and "messages" in data:
            details = data["messages"]
        message = error.description or error.name
        if status == 422:
            message = "The request does not match the schema."
        return error_response(status, _HTTP_CODES.get(status, "http_error"), message, details)


def _handle_imgq_error(error: ImgqError) -> Response:
    response = error_response(error.status, error.code, error.message, error.details)
    if error.status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def _handle_validation_error(error: ValidationError) -> Response:
    return error_response(
        422, "validation_error", "The request does not match the schema.", error.messages
    )


def _handle_backend_down(error: Exception) -> Response:
    logger.warning("backend unavailable: %s", error)
    return _handle_imgq_error(ServiceUnavailable("A backing service is unavailable; retry later."))


def _handle_unexpected(error: Exception) -> Response:
    logger.error("unhandled error", exc_info=error)
    return error_response(500, "internal_error", "An unexpected error occurred.")


def register_error_handlers(app: Flask) -> None:
    """Install the handlers; werkzeug's HTTP errors are handled by ``ImgqApi``."""
    app.register_error_handler(ImgqError, _handle_imgq_error)
    app.register_error_handler(ValidationError, _handle_validation_error)
    app.register_error_handler(redis.RedisError, _handle_backend_down)
    app.register_error_handler(OperationalError, _handle_backend_down)
    app.register_error_handler(Exception, _handle_unexpected)
