"""What every ``POST`` that creates a job does once the job record exists: enqueue, or undo.

If the broker cannot take the message, the job record, its idempotency claim and any upload
are removed and the client gets a ``503``: a ``202`` is only ever sent for a job that is both
stored and queued.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import url_for

from api.idempotency import release_claim
from api.metrics import JOBS_SUBMITTED
from api.services import services
from imgq.errors import ServiceUnavailable
from imgq.jobs import JobStatus


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
