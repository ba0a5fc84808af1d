"""Model exports: ask for one (a job on the training queue), list them, download them."""

from __future__ import annotations

import io
from typing import Any

from flask import Response, send_file
from marshmallow import Schema, fields, validate

from api.auth import current_client
from api.models import blp
from api.schemas import ErrorEnvelopeSchema, JobCreatedSchema, JobSchema
from api.services import services
from api.submission import PREFER_PARAMETER, enqueue_or_undo
from imgq.errors import NotFound
from imgq.jobs import new_job_id
from imgq.queueing import EXPORT_TASK, TRAIN_QUEUE
from ml.export_formats import FORMATS, file_name

_MIMETYPES = {"saved_model": "application/zip"}


class ExportRequestSchema(Schema):
    """Body of ``POST /models/<name>/versions/<v>/exports``."""

    format = fields.String(required=True, validate=validate.OneOf(FORMATS))


class ExportReportSchema(Schema):
    """An export's size and its agreement with the Keras model on the version's test split."""

    format = fields.String()
    file_name = fields.String()
    size_bytes = fields.Integer()
    test_images = fields.Integer()
    agreement = fields.Float()
    accuracy = fields.Float()
    keras_accuracy = fields.Float()
    accuracy_drop = fields.Float()
    within_margin = fields.Boolean()


class ExportNotFound(NotFound):
    """That export has not been made (yet)."""

    code = "export_not_found"


@blp.route("/<string:name>/versions/<int:version>/exports", methods=["POST"])
@blp.arguments(ExportRequestSchema)
@blp.response(202, JobCreatedSchema, headers={"Location": {"schema": {"type": "string"}}})
@blp.alt_response(200, schema=JobSchema, description="The job ended within `Prefer: wait=N`.")
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
@blp.doc(parameters=[PREFER_PARAMETER])
def request_export(
    body: dict[str, Any], name: str, version: int
) -> tuple[Any, int, Any] | Response:
    """Queue an export job; when it succeeds, download the file from ``.../exports/<format>``."""
    svc = services()
    svc.registry.get(name, version)
    job_id = new_job_id()
    params = {"model": name, "version": version, "format": body["format"]}
    svc.jobs.create_export_job(job_id, params, client=current_client().client)
    return enqueue_or_undo(
        job_id,
        "export",
        lambda: svc.celery.send_task(EXPORT_TASK, args=[job_id], queue=TRAIN_QUEUE),
    )


@blp.route("/<string:name>/versions/<int:version>/exports")
@blp.response(200, ExportReportSchema(many=True))
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def list_exports(name: str, version: int) -> list[dict[str, Any]]:
    """The exports made of a version, with their sizes and agreement figures."""
    return services().registry.exports(name, version)


@blp.route("/<string:name>/versions/<int:version>/exports/<string:fmt>")
@blp.response(200, description="The export file (.tflite, or a zipped SavedModel).")
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def download_export(name: str, version: int, fmt: str) -> Response:
    """Download an export that a finished export job produced."""
    svc = services()
    if fmt not in FORMATS or not any(
        r["format"] == fmt for r in svc.registry.exports(name, version)
    ):
        raise ExportNotFound(
            f"No {fmt!r} export of {name} v{version}; request one first.",
            {"model": name, "version": version, "format": fmt},
        )
    content = svc.registry.read_file(name, version, f"exports/{file_name(fmt)}")
    return send_file(
        io.BytesIO(content),
        download_name=f"{name}-v{version}-{file_name(fmt)}",
        mimetype=_MIMETYPES.get(fmt, "application/octet-stream"),
        as_attachment=True,
    )
