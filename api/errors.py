"""One error handler for the whole API: every error leaves as the same JSON envelope.

``ImgqError`` carries its own code and status; werkzeug's HTTP errors (404 routes, 405, 413
bodies) and webargs/marshmallow validation map to stable codes; a JSON body nested too deeply to
parse is a ``400``; Redis or broker outages become a ``503`` with ``Retry-After``; anything else
is logged with its traceback and answered with a generic ``500`` that leaks nothing.
"""

from __future__ import annotations

import json
import logging
import math
import traceback
from typing import Any

import redis
from flask import Flask, Response, jsonify
from flask_smorest import Api
from kombu.exceptions import OperationalError
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from api.metrics import REQUESTS_REJECTED
from api.schemas import ErrorEnvelopeSchema
from imgq.errors import (
    HttpError,
    ImgqError,
    InternalError,
    InvalidRequest,
    RateLimited,
    ServiceUnavailable,
    ValidationFailed,
    http_error_class,
)

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5
"""Seconds a client is told to wait when a backing service is down."""

_SERVER_MESSAGES = {
    "uri_too_long": "The request line is too long; send a shorter URL.",
    "headers_too_large": "The request headers are too many or too large.",
    "not_implemented": "The request uses a transfer coding the server does not support.",
    "forbidden": "The request is forbidden.",
    "internal_error": "An unexpected error occurred.",
}
"""Messages of the server's own answers; any other 4xx is a request it could not parse."""


def _envelope(code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


def error_response(status: int, code: str, message: str, details: Any = None) -> Response:
    """Build the JSON error envelope."""
    response = jsonify(_envelope(code, message, details))
    response.status_code = status
    REQUESTS_REJECTED.labels(str(status), code).inc()
    return response


def server_error_response(status: int, reason: str, detail: str) -> bytes:
    """A whole HTTP/1.1 error response with the envelope, for errors answered without Flask.

    gunicorn answers requests it cannot parse (a request line over ``limit_request_line``, too
    many or too large headers, a malformed request line) before the app sees them; this gives
    those answers the same envelope and stable codes as the app's, and counts them the same way.
    The connection is closed after it, as gunicorn does for these errors.

    Args:
        status: the status gunicorn chose, such as 400, 414 or 431.
        reason: its reason phrase, such as ``"URI Too Long"``.
        detail: gunicorn's description of what was wrong; kept as ``details.reason`` for a 4xx
            and dropped for a 5xx, which must leak nothing.

    Returns:
        The response bytes, status line to body.
    """
    error_class = http_error_class(status) or (InternalError if status >= 500 else InvalidRequest)
    code = error_class.code
    message = _SERVER_MESSAGES.get(code, "The server could not parse the HTTP request.")
    details = {"reason": detail} if detail and status < 500 else None
    body = json.dumps(_envelope(code, message, details)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    REQUESTS_REJECTED.labels(str(status), code).inc()
    return head.encode("latin-1") + body


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
        if status == ValidationFailed.status:
            message = SCHEMA_MISMATCH
        code = (http_error_class(status) or HttpError).code
        return error_response(status, code, message, details)


SCHEMA_MISMATCH = "The request does not match the schema."
"""Message of every ``validation_error``; ``details`` says which fields and why."""


def imgq_error_response(error: ImgqError) -> Response:
    """The envelope of an ``ImgqError``, with ``Retry-After`` when a backing service is down."""
    response = error_response(error.status, error.code, error.message, error.details)
    if isinstance(error, ServiceUnavailable):
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    if isinstance(error, RateLimited):
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    return response


def _handle_validation_error(error: ValidationError) -> Response:
    return imgq_error_response(ValidationFailed(SCHEMA_MISMATCH, error.messages))


def _handle_backend_down(error: Exception) -> Response:
    logger.warning("backend unavailable: %s", error)
    return imgq_error_response(ServiceUnavailable("A backing service is unavailable; retry later."))


_JSON_DECODER_MODULES = frozenset({"json.decoder", "json.scanner"})
"""Modules of the standard library's JSON parser (C scanner or its pure-Python fallback)."""


def _raised_by_json_decoder(error: BaseException) -> bool:
    """Whether the innermost Python frame of the error's traceback is the JSON parser's."""
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    return bool(frames) and frames[-1].f_globals.get("__name__") in _JSON_DECODER_MODULES


def _handle_recursion_error(error: RecursionError) -> Response:
    """A JSON body nested past the recursion limit is bad input, not a server fault.

    Python's ``json`` raises ``RecursionError``, not ``ValueError``, for a document such as
    ``[[[[...`` thousands deep, so neither Flask's ``get_json(silent=True)`` nor webargs (which
    catches only ``JSONDecodeError``) turns it into a 400. Handling it here covers every
    JSON-body endpoint, whichever of the two parses it. Only a recursion that ends inside the
    JSON parser is the client's doing; any other is a bug and stays a logged 500.
    """
    if not _raised_by_json_decoder(error):
        return _handle_unexpected(error)
    return imgq_error_response(InvalidRequest("The JSON body nests too deeply to be parsed."))


def _handle_unexpected(error: Exception) -> Response:
    logger.error("unhandled error", exc_info=error)
    return imgq_error_response(InternalError("An unexpected error occurred."))


def register_error_handlers(app: Flask) -> None:
    """Install the handlers; werkzeug's HTTP errors are handled by ``ImgqApi``."""
    app.register_error_handler(ImgqError, imgq_error_response)
    app.register_error_handler(ValidationError, _handle_validation_error)
    app.register_error_handler(RecursionError, _handle_recursion_error)
    app.register_error_handler(redis.RedisError, _handle_backend_down)
    app.register_error_handler(OperationalError, _handle_backend_down)
    app.register_error_handler(Exception, _handle_unexpected)
