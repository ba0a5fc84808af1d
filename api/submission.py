"""What every ``POST`` that creates a job does once the job record exists: enqueue, or undo.

If the broker cannot take the message, the job record, its idempotency claim and any upload
are removed and the client gets a ``503``: a ``202`` is only ever sent for a job that is both
stored and queued.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import url_for
from flask_smorest import Blueprint

from api.idempotency import release_claim
from api.metrics import JOBS_SUBMITTED
from api.services import services
from imgq.errors import ServiceUnavailable
from imgq.jobs import JobStatus

ERROR_STATUSES = (400, 401, 404, 409, 413, 415, 422, 503)
"""Error answers every job submission documents."""


def submission_endpoint(
    blp: Blueprint, path: str, body: dict[str, Any]
) -> Callable[[Callable[..., Any]], Any]:
    """Route and document a ``POST`` that creates a job (202, or 200 for an idempotent replay)."""
    from api.schemas import ErrorEnvelopeSchema, JobCreatedSchema, JobSchema

    def decorate(view: Callable[..., Any]) -> Any:
        for status in ERROR_STATUSES:
            view = blp.alt_response(status, schema=ErrorEnvelopeSchema)(view)
        view = blp.alt_response(
            200, schema=JobSchema, description="An Idempotency-Key replay: the earlier job."
        )(view)
        view = blp.response(
            202, JobCreatedSchema, headers={"Location": {"schema": {"type": "string"}}}
        )(view)
        view = blp.doc(requestBody=body)(view)
        return blp.route(path, methods=["POST"])(view)

    return decorate


def enqueue_or_undo(
    job_id: str,
    job_type: str,
    send: Callable[[], object],
    undo: Callable[[], object] = lambda: None,
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Run ``send``; on failure undo everything and answer 503, else answer 202 with Location."""
    try:
        send()
    except Exception as exc:
        services().jobs.delete(job_id)
        release_claim()
        undo()
        raise ServiceUnavailable("The job queue is unavailable; retry later.") from exc
    JOBS_SUBMITTED.labels(job_type).inc()
    location = url_for("jobs.get_job", job_id=job_id)
    return {"id": job_id, "status": JobStatus.QUEUED}, 202, {"Location": location}
