"""Errors of the inference-protocol views in the protocols' own shape: ``{"error": "<message>"}``.

Open Inference Protocol v2 (KServe, Triton) and TF Serving's REST API both answer a failed
request with one JSON object holding a message string, where imgq answers
``{"error": {"code", "message", "details"?}}``. Rather than a second error path, every answer
under the protocols' URL prefixes goes through imgq's one error handler as usual, so statuses,
``Retry-After``, ``WWW-Authenticate``, the rejection metrics and the logging of 500s stay
exactly as for any other endpoint, and an ``after_request`` hook then rewrites the envelope
into the protocol's shape. A hook, not a blueprint error handler, because it also covers the
answers no view of ours produces: the 401 of a missing key, the 429 of the rate limit, and
the 404 or 405 of a path or method that matches no route under the prefix.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from imgq.errors import ValidationFailed

PROTOCOL_PREFIXES = ("/v2", "/v1")
"""Path prefixes whose errors take the protocols' shape: OIP v2 and TF Serving's ``/v1``."""

PROTOCOL_ERROR_STATUSES = (400, 401, 404, 413, 429, 500, 503, 504)
"""Error statuses every protocol operation documents (429 and 503 carry ``Retry-After``)."""


class ProtocolErrorSchema(Schema):
    """Every error answer of the protocol endpoints: ``{"error": "<message>"}``."""

    error = fields.String(required=True, metadata={"description": "What went wrong."})


def _on_protocol_path(path: str) -> bool:
    return any(path == prefix or path.startswith(f"{prefix}/") for prefix in PROTOCOL_PREFIXES)


def protocol_message(envelope: dict[str, Any]) -> str:
    """The one-line message of an imgq error object (``{"code", "message", "details"?}``).

    A schema mismatch's message says only that; which fields failed and why is in its
    details, so they are appended: the protocols have nowhere else to put them.
    """
    message = str(envelope.get("message", ""))
    details = envelope.get("details")
    if envelope.get("code") == ValidationFailed.code and details:
        message = f"{message} {json.dumps(details, sort_keys=True)}"
    return message


def _reshape(response: Response) -> Response:
    if response.status_code < 400 or not _on_protocol_path(request.path) or not response.is_json:
        return response
    body = response.get_json(silent=True)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        response.set_data(json.dumps({"error": protocol_message(body["error"])}))
    return response


def install_protocol_errors(app: Flask) -> None:
    """Rewrite imgq's error envelope into ``{"error": "<message>"}`` under the protocol prefixes."""
    app.after_request(_reshape)


def protocol_errors(
    blp: Blueprint, *extra_statuses: int
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Document a protocol operation's errors in the protocol's shape, the default included.

    flask-smorest documents imgq's envelope as every operation's ``default`` answer; these
    operations never send it, so the default is replaced too (schemathesis checks every
    answer against the document).

    Args:
        blp: the operation's blueprint.
        *extra_statuses: statuses beyond ``PROTOCOL_ERROR_STATUSES`` the operation may answer.
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        for status in sorted({*PROTOCOL_ERROR_STATUSES, *extra_statuses}):
            view = blp.alt_response(status, schema=ProtocolErrorSchema)(view)
        default = {
            "description": "Any other error, in the protocol's shape.",
            "content": {"application/json": {"schema": ProtocolErrorSchema}},
        }
        documented: Callable[..., Any] = blp.doc(responses={"default": default})(view)
        return documented

    return decorate
