"""Model exports: ask for one (a job on the training queue), list them, download them."""

from __future__ import annotations

import io
import json
from typing import Any

from flask import Response, send_file
from flask_smorest import Blueprint

from api.auth import current_client
from api.idempotency import replay_or_claim
from api.model_access import OWNER_PARAMETER, version_of, visible_model
from api.quotas import admit
from api.schemas import ErrorEnvelopeSchema, ExportReportSchema, ExportRequestSchema
from api.services import services
from api.submission import enqueue_or_undo, submission_endpoint
from imgq.errors import ExportNotFound
from imgq.jobs.idempotency import fingerprint
from imgq.jobs.status import JobType
from imgq.jobs.store import new_job_id
from imgq.queueing import EXPORT_TASK, TRAIN_QUEUE
from imgq.quotas import JobKind
from ml.export_formats import FORMATS, file_name

blp = Blueprint("exports", __name__, url_prefix="/models", description="Model exports")

_MIMETYPES = {"saved_model": "application/zip"}


@submission_endpoint(
    blp, "/<string:name>/versions/<int:version>/exports", arguments=ExportRequestSchema
)
def request_export(
    body: dict[str, Any], name: str, version: int
) -> tuple[dict[str, Any], int, dict[str, str]] | Response:
    """Queue an export job; when it succeeds, download the file from ``.../exports/<format>``."""
    svc = services()
    model = visible_model(name)
    version_of(model, version)
    job_id = new_job_id()
    params = {"model": model, "version": version, "format": body["format"]}
    replay = replay_or_claim(fingerprint(json.dumps(params, sort_keys=True)), job_id)
    if replay is not None:
        return replay
    admit(job_id, JobKind.LONG)
    svc.jobs.create_job(job_id, JobType.EXPORT, params, client=current_client().client)
    return enqueue_or_undo(
        job_id,
        JobType.EXPORT,
        lambda: svc.celery.send_task(EXPORT_TASK, args=[job_id], queue=TRAIN_QUEUE),
    )


@blp.route("/<string:name>/versions/<int:version>/exports", parameters=[OWNER_PARAMETER])
@blp.response(200, ExportReportSchema(many=True))
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def list_exports(name: str, version: int) -> list[dict[str, Any]]:
    """The exports made of a version, with their sizes and agreement figures."""
    model = visible_model(name)
    version_of(model, version)
    return services().registry.exports(model, version)


@blp.route(
    "/<string:name>/versions/<int:version>/exports/<string:fmt>", parameters=[OWNER_PARAMETER]
)
@blp.response(200, description="The export file (.tflite, or a zipped SavedModel).")
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def download_export(name: str, version: int, fmt: str) -> Response:
    """Download an export that a finished export job produced."""
    svc = services()
    model = visible_model(name)
    version_of(model, version)
    if fmt not in FORMATS or not any(
        r["format"] == fmt for r in svc.registry.exports(model, version)
    ):
        raise ExportNotFound(
            f"No {fmt!r} export of {name} v{version}; request one first.",
            {"model": name, "version": version, "format": fmt},
        )
    content = svc.registry.read_file(model, version, f"exports/{file_name(fmt)}")
    return send_file(
        io.BytesIO(content),
        download_name=f"{name}-v{version}-{file_name(fmt)}",
        mimetype=_MIMETYPES.get(fmt, "application/octet-stream"),
        as_attachment=True,
    )
