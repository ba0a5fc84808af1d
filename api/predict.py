"""``POST /jobs/predict``: images in (multipart or base64 JSON), a queued job out."""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from flask import Response, request
from flask_smorest import Blueprint
from marshmallow import fields

from api.auth import current_client
from api.errors import SCHEMA_MISMATCH
from api.idempotency import replay_or_claim
from api.model_access import version_of, visible_model
from api.quotas import admit
from api.schemas import (
    PredictJsonSchema,
    PredictMultipartSchema,
    PredictOptionsSchema,
    WholeNumber,
)
from api.services import services
from api.submission import submission_endpoint, submitted
from imgq.api_keys import Role
from imgq.errors import (
    Forbidden,
    InvalidRequest,
    TooManyImages,
    UnsupportedMediaType,
    ValidationFailed,
)
from imgq.jobs.idempotency import fingerprint
from imgq.jobs.status import JobType
from imgq.jobs.store import new_job_id
from imgq.media_types import IMAGE_MEDIA_TYPES
from imgq.queueing import (
    can_queue_in_transaction,
    predict_message_commands,
    send_predict_messages,
)
from imgq.quotas import JobKind
from imgq.webhooks.callback_urls import check_callback_url
from ml.preprocess import ImageLimits, check_images
from ml.registry import split_model_id

blp = Blueprint("predict", __name__, url_prefix="/jobs", description="Prediction jobs")

_PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": PredictMultipartSchema},
        "application/json": {"schema": PredictJsonSchema},
        **{
            media_type: {"schema": {"type": "string", "format": "binary"}}
            for media_type in IMAGE_MEDIA_TYPES
        },
    },
}


def _query_parameters(schema: type[PredictOptionsSchema]) -> list[dict[str, Any]]:
    """The options as query parameters, for the raw-body form's documentation."""
    types = {WholeNumber: "integer", fields.Boolean: "boolean"}
    return [
        {
            "in": "query",
            "name": name,
            "required": False,
            "schema": {
                "type": next((t for k, t in types.items() if isinstance(field, k)), "string")
            },
            "description": f"Raw image body only (else a form or JSON field). "
            f"{field.metadata.get('description', '')}".strip(),
        }
        for name, field in schema().fields.items()
    ]


RAW_BODY_PARAMETERS = _query_parameters(PredictOptionsSchema)
"""The query parameters of ``POST /jobs/predict`` with an image body."""


def _decode_base64(text: str, index: int) -> bytes:
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"images[{index}] is not valid base64.", {"image": index}) from exc


_OPTIONS = PredictOptionsSchema()
_JSON_BODY = PredictJsonSchema()
"""Schemas are built once: a marshmallow schema instance is reusable and costly to make."""


def _read_predict_request() -> tuple[list[bytes], dict[str, Any]]:
    """Return the images and options of a predict request in any accepted form.

    The commonest call, one image, can skip multipart entirely: the body *is* the image
    (``Content-Type: image/jpeg`` and the like) and the options are query parameters.
    """
    if request.mimetype in IMAGE_MEDIA_TYPES:
        image = request.get_data(cache=False)
        if not image:
            raise InvalidRequest("The body is empty; send the image's bytes.")
        return [image], _OPTIONS.load(request.args.to_dict())
    if request.mimetype == "multipart/form-data":
        extra_parts = sorted(set(request.files) - {"image"})
        if extra_parts:
            raise InvalidRequest(f"Unexpected file parts {extra_parts}; send images as `image`.")
        images = [part.read() for part in request.files.getlist("image")]
        if not images:
            raise InvalidRequest("No `image` file part in the form.")
        return images, _OPTIONS.load(request.form.to_dict())
    if request.mimetype == "application/json":
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise InvalidRequest("The body is not a JSON object.")
        options = _JSON_BODY.load(body)
        encoded = options.pop("images")
        return [_decode_base64(text, i) for i, text in enumerate(encoded)], options
    raise UnsupportedMediaType(
        "Send multipart/form-data, application/json or an image body "
        f"({', '.join(sorted(IMAGE_MEDIA_TYPES))}), not {request.mimetype or 'nothing'}."
    )


def _check_images(images: list[bytes]) -> None:
    settings = services().settings
    if len(images) > settings.max_images_per_job:
        raise TooManyImages(
            f"{len(images)} images in one job; the limit is {settings.max_images_per_job}.",
            {"count": len(images), "limit": settings.max_images_per_job},
        )
    limits = ImageLimits(
        settings.max_image_bytes,
        settings.max_image_pixels,
        settings.max_decode_bytes,
        settings.max_concurrent_decodes,
    )
    check_images(images, limits, settings.max_request_pixels)


def _retains(model: str, asked: bool | None) -> bool:
    """Whether a job keeps its images for feedback: as asked, else as the model's settings say;
    only for the caller's own models (a shared model's owner never gets another's images)."""
    caller = current_client()
    owner, _ = split_model_id(model)
    owns = owner == caller.client or caller.role is Role.ADMIN
    if asked and not owns:
        raise Forbidden("Only the model's owner may keep its predictions' images (`retain`).")
    if asked is None:
        return owner == caller.client and bool(
            services().registry.model_settings(model).get("retain_images", False)
        )
    return asked


def queue_predict_job(
    images: list[bytes], options: dict[str, Any], *, max_top_k: int | None = None
) -> tuple[str, Response | None]:
    """Check, admit and store a predict job for the caller, for the views over a job (the
    inference protocols), which then queue it with ``send_predict_job``.

    Args:
        images: the encoded images, in order.
        options: validated ``PredictOptionsSchema`` fields (``owner``, ``retain`` are consumed).
        max_top_k: the ``top_k`` ceiling, when a protocol needs more than ``IMGQ_MAX_TOP_K``
            (every class's score: Open Inference Protocol's ``probabilities``).

    Returns:
        The new job's id and, for an ``Idempotency-Key`` replay, the stored answer to send
        instead (the job id is then unused).

    Raises:
        ImgqError: the request is refused (4xx).
    """
    job_id = new_job_id()
    stored = store_predict_job(job_id, images, options, queue=False, max_top_k=max_top_k)
    return job_id, stored if isinstance(stored, Response) else None


def store_predict_job(
    job_id: str,
    images: list[bytes],
    options: dict[str, Any],
    *,
    queue: bool,
    max_top_k: int | None = None,
) -> Response | bool:
    """Check, admit and store a predict job for the caller; the one way any predict endpoint
    creates one (``POST /jobs/predict`` and, through ``queue_predict_job``, the protocols).

    With ``queue``, the job's message is queued in the same Redis transaction as the record
    when the broker is the job store's Redis (``imgq.queueing.can_queue_in_transaction``):
    one round trip, and never a job without its message or a message without its job.

    Args:
        job_id: the new job's id.
        images: the encoded images, in order.
        options: validated ``PredictOptionsSchema`` fields (``owner``, ``retain`` are consumed).
        queue: queue the job's message with the record where possible.
        max_top_k: the ``top_k`` ceiling (default ``IMGQ_MAX_TOP_K``).

    Returns:
        For an ``Idempotency-Key`` replay, the stored answer to send instead; else whether
        the job's message was queued with it (if not, send it with ``send_predict_job``).

    Raises:
        ImgqError: the request is refused (4xx).
    """
    _check_images(images)
    svc = services()
    model = visible_model(
        options.get("model", svc.settings.default_model), options.pop("owner", None)
    )
    version_of(model, options.get("version"))  # 404 now for unknown models or versions
    ceiling = svc.settings.max_top_k if max_top_k is None else max_top_k
    if options.get("top_k", 0) > ceiling:
        raise ValidationFailed(SCHEMA_MISMATCH, {"top_k": [f"Must be at most {ceiling}."]})
    callback = options.get("callback_url")
    if callback is not None:
        check_callback_url(callback, svc.settings.webhook_allow_private, svc.settings.webhook_ports)
    retain = _retains(model, options.pop("retain", None))
    content = json.dumps({**options, "model": model, "retain": retain}, sort_keys=True)
    replay = replay_or_claim(fingerprint(content, *images), job_id)
    if replay is not None:
        return replay
    explain = bool(options.get("explain"))
    admit(
        job_id,
        JobKind.EXPLAIN if explain else JobKind.PREDICT,
        images=len(images),
        size=sum(map(len, images)),
    )
    until = time.time() + svc.settings.job_ttl_s  # feedback is accepted while the job lives
    retained = [svc.datasets.hold(model, image, until) for image in images] if retain else None
    commands = None
    if queue and can_queue_in_transaction(svc.settings):
        commands = predict_message_commands(svc.celery, job_id, range(len(images)), explain=explain)
    svc.jobs.create_predict_job(
        job_id,
        images,
        model,
        options.get("version"),  # None: the worker pins the version it serves
        options.get("top_k", svc.settings.default_top_k),
        client=current_client().client,
        deadline_s=svc.settings.predict_deadline_s,
        check_after_s=svc.settings.predict_check_interval_s,
        callback_url=callback,
        explain=explain,
        retained=retained,
        queue_commands=commands,
    )
    return commands is not None


def send_predict_job(job_id: str, image_count: int, options: dict[str, Any]) -> None:
    """Queue a stored predict job's messages (``enqueue_or_undo`` calls this)."""
    explain = bool(options.get("explain"))
    send_predict_messages(services().celery, job_id, range(image_count), explain=explain)


@submission_endpoint(blp, "/predict", body=_PREDICT_BODY, parameters=RAW_BODY_PARAMETERS)
def submit_predict() -> tuple[dict[str, Any], int, dict[str, str]] | Response:
    """Queue a prediction job for one or more images.

    Three forms: ``multipart/form-data`` (``image`` parts and form fields), JSON (base64
    ``images``), or the image itself as the body (``Content-Type: image/jpeg``, png, webp,
    gif, bmp or tiff) with the options as query parameters.
    """
    request.max_content_length = services().settings.max_request_bytes
    images, options = _read_predict_request()
    job_id = new_job_id()
    with submitted(job_id, JobType.PREDICT) as submission:  # listening before anything is queued
        stored = store_predict_job(job_id, images, options, queue=True)
        if isinstance(stored, Response):
            return stored  # an Idempotency-Key replay
        if stored:
            submission.queued_with_record()
        else:
            submission.send(lambda: send_predict_job(job_id, len(images), options))
        return submission.answer()
