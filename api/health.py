"""Liveness and readiness: ``/healthz`` says the process serves, ``/readyz`` that Redis answers."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from api.auth import OPEN_OPERATION
from api.schemas import ErrorEnvelopeSchema, HealthSchema
from api.services import services
from imgq.errors import ServiceUnavailable

blp = Blueprint("health", __name__, description="Process health")


@blp.route("/healthz")
@blp.doc(**OPEN_OPERATION)
@blp.response(200, HealthSchema)
def healthz() -> dict[str, Any]:
    """The process is up."""
    return {"status": "ok"}


@blp.route("/readyz")
@blp.doc(**OPEN_OPERATION)
@blp.response(200, HealthSchema)
@blp.alt_response(503, schema=ErrorEnvelopeSchema)
def readyz() -> dict[str, Any]:
    """Redis is reachable, so jobs can be accepted."""
    if not services().redis.ping():
        raise ServiceUnavailable("Redis did not answer.")
    return {"status": "ready"}
