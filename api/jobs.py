"""Job endpoints common to every job type: read (and long-poll), list, cancel, download.

Submission lives beside, each kind on its own blueprint under ``/jobs`` (``api.predict``,
``api.finetune``; exports in ``api.exports`` under ``/models``).
"""

from __future__ import annotations

import io
import mimetypes
import time
from typing import Any

from flask import Response, send_file
from flask_smorest import Blueprint

from api.auth import check_owner, current_client
from api.schemas import (
    ErrorEnvelopeSchema,
    JobListQuerySchema,
    JobListSchema,
    JobQuerySchema,
    JobSchema,
)
from api.services import services
from imgq.api_keys import Role
from imgq.errors import JobNotCancelable, JobNotFound, NotFound, WebhookNotDue
from imgq.jobs.documents import job_document, job_json
from imgq.jobs.status import CancelOutcome, JobStatus, JobType
from imgq.webhooks.delivery import Delivery
from ml.registry import model_id

blp = Blueprint("jobs", __name__, url_prefix="/jobs", description="Prediction and training jobs")


def owned_fields(job_id: str) -> dict[str, str]:
    """The caller's job record; 404 when missing or someone else's."""
    return _owned(job_id, services().jobs.fields(job_id))


def _owned(job_id: str, fields: dict[str, str]) -> dict[str, str]:
    if not fields:
        raise JobNotFound(f"No job with id {job_id!r}.", {"id": job_id})
    check_owner(job_id, fields.get("client"))
    return fields


def job_response(fields: dict[str, str], delivery: str | None) -> Response:
    """The job as clients read it (``JobSchema``), rendered from the stored record without
    re-encoding its result (``imgq.jobs.documents.job_json``)."""
    webhook = Delivery.from_json(delivery).public() if delivery is not None else None
    return Response(job_json(fields, webhook), mimetype="application/json")


@blp.route("")
@blp.arguments(JobListQuerySchema, location="query")
@blp.response(200, JobListSchema)
def list_jobs(query: dict[str, Any]) -> dict[str, Any]:
    """The caller's jobs (an admin's: everybody's), newest first, a page at a time."""
    caller = current_client()
    jobs, cursor = services().jobs.list_jobs(
        None if caller.role is Role.ADMIN else caller.client,
        status=query["status"].value if "status" in query else None,
        job_type=query["type"].value if "type" in query else None,
        limit=query["limit"],
        cursor=query.get("cursor"),
    )
    return {"jobs": jobs, "next_cursor": cursor}


@blp.route("/<string:job_id>")
@blp.arguments(JobQuerySchema, location="query")
@blp.response(200, JobSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def get_job(query: dict[str, Any], job_id: str) -> Response:
    """Read a job's state, and its result or error once it has ended.

    With ``wait``, the answer is held until the job ends or ``wait`` seconds pass, so clients
    get results as soon as they exist without polling in a tight loop.
    """
    svc = services()
    with svc.waiters.watching(job_id, query["wait"]) as event:  # before the read
        fields, delivery = svc.jobs.fields_and_delivery(job_id)
        _owned(job_id, fields)
        if event is not None and not JobStatus(fields["status"]).is_terminal:
            event.wait(query["wait"])
            fields, delivery = svc.jobs.fields_and_delivery(job_id)
            if not fields:  # expired while waiting
                raise JobNotFound(f"No job with id {job_id!r}.", {"id": job_id})
    return job_response(fields, delivery)


@blp.route("/<string:job_id>/webhook/redeliver", methods=["POST"])
@blp.response(202, description="The delivery is scheduled again.")
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
@blp.alt_response(409, schema=ErrorEnvelopeSchema)
def redeliver_webhook(job_id: str) -> dict[str, Any]:
    """Send an ended job's webhook again (after a failed delivery, or to resync a receiver)."""
    svc = services()
    fields = owned_fields(job_id)
    if not fields.get("callback_url"):
        raise NotFound(f"Job {job_id!r} has no callback_url.", {"id": job_id})
    if not JobStatus(fields["status"]).is_terminal:
        raise WebhookNotDue(
            "The job has not ended; its webhook is sent when it does.", {"id": job_id}
        )
    delivery = svc.deliveries.load(job_id)
    if delivery is not None:  # else the first delivery has not run yet: scheduling it is enough
        delivery.redeliver()
        svc.deliveries.save(job_id, delivery)
    svc.deliveries.schedule(job_id, time.time())
    return delivery.public() if delivery else {"state": "pending"}


@blp.route("/<string:job_id>", methods=["DELETE"])
@blp.response(200, JobSchema)
@blp.alt_response(202, schema=JobSchema, description="A running fine-tune will stop soon.")
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
@blp.alt_response(409, schema=ErrorEnvelopeSchema)
def cancel_job(job_id: str) -> tuple[dict[str, Any], int]:
    """Cancel a queued job, or stop a running fine-tune between batches."""
    svc = services()
    owned_fields(job_id)
    outcome = svc.jobs.cancel(job_id)
    if outcome is CancelOutcome.MISSING:
        raise JobNotFound(f"No job with id {job_id!r}.", {"id": job_id})
    if outcome in (CancelOutcome.ENDED, CancelOutcome.NOT_CANCELABLE):
        raise JobNotCancelable(
            "The job has already ended."
            if outcome is CancelOutcome.ENDED
            else "A running predict job cannot be canceled; it ends in moments.",
            {"id": job_id},
        )
    document = svc.jobs.get(job_id)
    assert document is not None
    return document, 200 if outcome is CancelOutcome.CANCELED else 202


@blp.route("/<string:job_id>/artifacts/<string:name>")
@blp.response(200, description="The file (PNG plot or JSON report).")
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def get_artifact(job_id: str, name: str) -> Any:
    """Download a file a job produced: fine-tune report and plots, or predict heatmaps."""
    svc = services()
    document = job_document(owned_fields(job_id))
    result = document["result"] or {}
    content = None
    if name in result.get("artifacts", []):
        if document["type"] is JobType.FINETUNE:
            owner = result.get("owner", svc.settings.legacy_model_owner)  # older results: none
            model = model_id(owner, result["model"])
            content = svc.registry.read_file(model, int(result["version"]), name)
        else:
            content = svc.jobs.artifact(job_id, name)
    if content is None:
        raise NotFound(f"Job {job_id!r} has no artifact {name!r}.", {"id": job_id, "name": name})
    return send_artifact(content, name)


def send_artifact(content: bytes, name: str) -> Response:
    """A job's or a version's file (PNG plot, JSON report), cacheable: artifacts never change."""
    return send_file(
        io.BytesIO(content),
        mimetype=mimetypes.guess_type(name)[0],
        download_name=name,
        max_age=3600,
    )
