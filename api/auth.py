"""Bearer-key authentication and the two roles, applied to every request in one place.

Health, readiness and metrics stay open for probes and scrapers (the Open Inference Protocol's
health and server metadata too, as Triton's are: they say nothing about anyone's models), and
the OpenAPI document, the ``/docs`` page and the ``/console`` page (with their files) for readers
who have no key yet; everything else needs ``Authorization: Bearer <key>``, which the OpenAPI
document declares as its security scheme.
A client sees only its own jobs: another client's job id is answered exactly like an unknown
one (404), so ids cannot be probed.
"""

from __future__ import annotations

from flask import Flask, Response, g, request

from api.errors import imgq_error_response
from imgq.api_keys import ApiKey, ReloadingKeyRing, Role
from imgq.errors import Forbidden, JobNotFound, Unauthorized

OPEN_ENDPOINTS = frozenset(
    {
        "health.healthz",
        "health.readyz",
        "metrics.metrics",
        "oip.server_metadata",
        "oip.server_live",
        "oip.server_ready",
        # flask-smorest's own blueprint ("api-docs"): the document and the Swagger UI page
        "api-docs.openapi_json",
        "api-docs.openapi_swagger_ui",
        "docs.swagger_ui_asset",
        # the /console page and its files: every call the page makes sends the key
        "console.console_page",
        "console.console_slash",
        "console.console_asset",
    }
)
"""Endpoints that answer without a key."""

BEARER_SCHEME = "bearerAuth"
"""Name of the OpenAPI security scheme every operation but the open ones requires."""

BEARER_SECURITY_SCHEME: dict[str, str] = {
    "type": "http",
    "scheme": "bearer",
    "description": "An imgq API key, sent as `Authorization: Bearer <key>`.",
}
"""The scheme as OpenAPI describes it; Swagger UI's "Authorize" button asks for the key."""

OPEN_OPERATION: dict[str, list[dict[str, list[str]]]] = {"security": []}
"""``@blp.doc(**OPEN_OPERATION)`` marks a documented operation that needs no key."""


def current_client() -> ApiKey:
    """The authenticated key of this request."""
    key: ApiKey = g.api_key
    return key


def require_admin() -> None:
    """Stop the request unless it comes with an admin key."""
    if current_client().role is not Role.ADMIN:
        raise Forbidden("Only an admin key may do this.")


def check_owner(job_id: str, owner: str | None) -> None:
    """404 unless the job belongs to the caller (admins see every job)."""
    caller = current_client()
    if caller.role is not Role.ADMIN and owner != caller.client:
        raise JobNotFound(f"No job with id {job_id!r}.", {"id": job_id})


def install_auth(app: Flask, keys: ReloadingKeyRing) -> None:
    """Authenticate every request before its view runs, against the keys file as it is now
    (re-read within a second or so of a change: a revoked key is refused without a restart)."""

    @app.before_request
    def _authenticate() -> Response | None:
        if request.endpoint in OPEN_ENDPOINTS or request.endpoint is None:
            return None  # unknown routes fall through to the 404 handler
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        key = keys.current().authenticate(presented.strip()) if scheme.lower() == "bearer" else None
        if key is None:
            response = imgq_error_response(
                Unauthorized(
                    "Send a valid API key as `Authorization: Bearer <key>`."
                    if header
                    else "This endpoint needs `Authorization: Bearer <key>`."
                )
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="imgq"'
            return response
        g.api_key = key
        return None
