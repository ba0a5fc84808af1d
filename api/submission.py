"""What every ``POST`` that creates a job does once the job record exists: enqueue, or undo.

If the broker cannot take the message, the job record, its idempotency claim and any upload
are removed and the client gets a ``503``: a ``202`` is only ever sent for a job that is both
stored and queued.

A client that would rather have the result in the same round trip sends ``Prefer: wait=N``
(RFC 7240): the answer is held until the job ends (``200`` with the whole job, and
``Preference-Applied``) or ``N`` seconds pass (the usual ``202``). It saves the follow-up
``GET`` of a short job: one request instead of two for the client and the API.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from flask import Response, request, url_for
from flask_smorest import Blueprint
from marshmallow import Schema

from api.idempotency import release_claim
from api.jobs import job_response
from api.metrics import JOBS_SUBMITTED
from api.quotas import release
from api.schemas import MAX_WAIT_S, ErrorEnvelopeSchema, JobCreatedSchema, JobSchema
from api.services import services
from imgq.errors import ServiceUnavailable
from imgq.jobs.documents import job_document
from imgq.jobs.status import JobStatus, JobType
from imgq.redis_client import wait_for_replicas

ERROR_STATUSES = (400, 401, 404, 409, 413, 415, 422, 503)
"""Error answers every job submission documents."""


def submission_endpoint(
    blp: Blueprint,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    arguments: type[Schema] | None = None,
    parameters: Sequence[dict[str, Any]] = (),
) -> Callable[[Callable[..., Any]], Any]:
    """Route and document a ``POST`` that creates a job (202, or 200 for an idempotent replay).

    Args:
        blp: the blueprint to route on.
        path: the rule, relative to the blueprint's prefix.
        body: the request body's OpenAPI description, for bodies the view reads itself
            (multipart uploads, either of two content types).
        arguments: a JSON body schema that flask-smorest validates (422) and passes to the
            view as its first argument.
        parameters: more parameters to document (query parameters the view reads itself).
    """

    def decorate(view: Callable[..., Any]) -> Any:
        for status in ERROR_STATUSES:
            view = blp.alt_response(status, schema=ErrorEnvelopeSchema)(view)
        view = blp.alt_response(
            200,
            schema=JobSchema,
            description=(
                "The job ended within `Prefer: wait=N`, or an Idempotency-Key replay: the job."
            ),
        )(view)
        view = blp.doc(parameters=[PREFER_PARAMETER, *parameters])(view)
        view = blp.response(
            202, JobCreatedSchema, headers={"Location": {"schema": {"type": "string"}}}
        )(view)
        if arguments is not None:
            view = blp.arguments(arguments)(view)
        if body is not None:
            view = blp.doc(requestBody=body)(view)
        return blp.route(path, methods=["POST"])(view)

    return decorate


PREFER_PARAMETER = {
    "in": "header",
    "name": "Prefer",
    "required": False,
    "schema": {"type": "string"},
    "description": (
        "`wait=N` (RFC 7240): hold the answer up to N seconds (at most 60) for the job to end; "
        "200 with the job if it did, else the usual 202."
    ),
}


def preferred_wait_s() -> float:
    """Seconds from the request's ``Prefer: wait=N``; 0 when absent or not a number."""
    for preference in request.headers.get("Prefer", "").split(","):
        name, _, value = preference.partition("=")
        if name.strip().lower() == "wait":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                return 0.0
            return min(max(seconds, 0.0), MAX_WAIT_S) if math.isfinite(seconds) else 0.0
    return 0.0


def _send_or_undo(
    job_id: str, job_type: JobType, send: Callable[[], object], undo: Callable[[], object]
) -> None:
    """Run ``send``; if it fails, remove the job, its claims and whatever ``undo`` undoes, and
    raise ``ServiceUnavailable`` (503)."""
    try:
        send()
        _replicate()
    except Exception as exc:
        services().jobs.delete(job_id)
        release_claim()
        release(job_id)
        undo()
        raise ServiceUnavailable("The job queue is unavailable; retry later.") from exc
    JOBS_SUBMITTED.labels(job_type.value).inc()


def _replicate() -> None:
    """With ``IMGQ_REDIS_MIN_REPLICAS``, hold the answer until replicas have the job: its
    record (job store) and its message (broker; the same server unless ``IMGQ_BROKER_URL``
    names another), so a failover right after the ``202`` cannot lose it."""
    svc = services()
    settings = svc.settings
    wait_for_replicas(svc.redis, settings.redis_min_replicas, settings.redis_replica_timeout_ms)
    if settings.celery_broker_url != settings.redis_url:
        wait_for_replicas(
            svc.broker, settings.redis_min_replicas, settings.redis_replica_timeout_ms
        )


def send_and_wait(
    job_id: str, job_type: JobType, send: Callable[[], object], wait_s: float
) -> dict[str, Any] | None:
    """Queue a stored job (as ``enqueue_or_undo`` does) and wait up to ``wait_s`` for its end.

    For the synchronous views over a job (the inference protocols): the ended job's document,
    or None if it is still open after ``wait_s``.
    """
    with submitted(job_id, job_type, wait_s) as submission:
        submission.send(send)
        ended = submission.ended()
    return job_document(ended[0]) if ended is not None else None


class Submission:
    """A job being submitted: queued (by ``send``, or with its record), then answered."""

    def __init__(
        self, job_id: str, job_type: JobType, event: threading.Event | None, wait_s: float
    ) -> None:
        self.job_id = job_id
        self.job_type = job_type
        self._event = event
        self._wait_s = wait_s

    def send(self, send: Callable[[], object], undo: Callable[[], object] = lambda: None) -> None:
        """Queue the stored job with ``send``, or undo it and raise ``ServiceUnavailable``."""
        _send_or_undo(self.job_id, self.job_type, send, undo)

    def queued_with_record(self) -> None:
        """The job's messages went with its record, in one transaction: count it (once
        replicas have it, with ``IMGQ_REDIS_MIN_REPLICAS``; else undo it and raise
        ``ServiceUnavailable``)."""
        _send_or_undo(self.job_id, self.job_type, lambda: None, lambda: None)

    def answer(self) -> tuple[dict[str, Any], int, dict[str, str]] | Response:
        """``202`` with ``Location``; or with ``Prefer: wait=N``, the ended job if it ended in
        time (``200``, ``Preference-Applied``)."""
        location = url_for("jobs.get_job", job_id=self.job_id)
        ended = self.ended()
        if ended is not None:
            response = job_response(*ended)
            response.headers["Location"] = location
            response.headers["Preference-Applied"] = f"wait={self._wait_s:g}"
            return response
        return {"id": self.job_id, "status": JobStatus.QUEUED}, 202, {"Location": location}

    def ended(self) -> tuple[dict[str, str], str | None] | None:
        """The job's record and webhook delivery once it has ended, waiting up to the
        submission's wait; None when it is still open then (or nothing was to be waited for)."""
        if self._event is None or not self._event.wait(self._wait_s):
            return None
        fields, delivery = services().jobs.fields_and_delivery(self.job_id)
        if fields and JobStatus(fields["status"]).is_terminal:
            return fields, delivery
        return None


@contextmanager
def submitted(job_id: str, job_type: JobType, wait_s: float | None = None) -> Iterator[Submission]:
    """Listen for ``job_id``'s end for as long as the block runs: up to ``wait_s``, by default
    the request's ``Prefer: wait``.

    Enter it before the job is stored or queued, so an end that comes at once still wakes the
    answer.
    """
    wait_s = preferred_wait_s() if wait_s is None else wait_s
    with services().waiters.watching(job_id, wait_s) as event:
        yield Submission(job_id, job_type, event, wait_s)


def enqueue_or_undo(
    job_id: str,
    job_type: JobType,
    send: Callable[[], object],
    undo: Callable[[], object] = lambda: None,
) -> tuple[dict[str, Any], int, dict[str, str]] | Response:
    """Run ``send``; on failure undo everything and answer 503, else answer 202 with Location.

    With ``Prefer: wait=N``, the job's end is awaited first (see the module docstring).
    """
    with submitted(job_id, job_type) as submission:
        submission.send(send, undo)
        return submission.answer()
