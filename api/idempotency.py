"""The ``Idempotency-Key`` header of ``POST /jobs/*``: replay the earlier job or claim the key."""

from __future__ import annotations

import re

from flask import Response, jsonify, request

from api.auth import current_client
from api.schemas import JobSchema
from api.services import services
from imgq.errors import InvalidRequest

HEADER = "Idempotency-Key"
_VALID = re.compile(r"^[\x21-\x7e]{1,255}$")


def replay_or_claim(content: str, job_id: str) -> Response | None:
    """The earlier job's document (200) if this key was used before; None once claimed."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not _VALID.match(key):
        raise InvalidRequest(f"{HEADER} must be 1-255 visible ASCII characters.")
    svc = services()
    earlier = svc.idempotency.claim(current_client().client, key, content, job_id)
    if earlier is None:
        return None
    document = svc.jobs.get(earlier.job_id)
    if document is None:  # the job expired before its key: start afresh
        svc.idempotency.release(current_client().client, key)
        return replay_or_claim(content, job_id)
    response = jsonify(JobSchema().dump(document))
    response.status_code = 200
    return response


def release_claim() -> None:
    """Forget this request's key after its job could not be created."""
    key = request.headers.get(HEADER)
    if key is not None:
        services().idempotency.release(current_client().client, key)
