"""Request and response schemas: validation at the edge and the OpenAPI document, in one place."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from marshmallow import Schema, fields, validate

from imgq.jobs import JobStatus, JobType

MAX_TOP_K = 1000
"""Largest ``top_k`` accepted; a model's own class count caps what is returned."""


class WholeNumber(fields.Integer):
    """An integer field that refuses fractions (``2.5``, ``2.0``) instead of truncating them.

    ``fields.Integer`` turns a JSON ``2.5`` into ``2`` without a word, so a client's mistake runs
    as a request it did not make. ``strict=True`` would refuse it but also the string ``"3"``,
    and every multipart form value arrives as a string; so strings still parse as integers
    (``"2.5"`` does not parse) and only numbers that are not whole are refused.
    """

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> int:
        if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
            raise self.make_error("invalid", input=value)
        return super()._deserialize(value, attr, data, **kwargs)


class PredictOptionsSchema(Schema):
    """Options of a predict job, shared by the JSON and multipart forms."""

    top_k = WholeNumber(
        validate=validate.Range(min=1, max=MAX_TOP_K),
        metadata={"description": "Labels returned per image (default 5)."},
    )
    model = fields.String(
        validate=validate.Regexp(r"^[a-z0-9][a-z0-9_-]{0,62}$"),
        metadata={"description": "Model name (default: the built-in `imagenet`)."},
    )
    version = WholeNumber(
        validate=validate.Range(min=1),
        metadata={"description": "Model version (default: the model's active version)."},
    )
    callback_url = fields.String(
        validate=validate.Length(max=2048),
        metadata={"description": "Called (signed POST of the job) when the job ends."},
    )
    explain = fields.String(
        validate=validate.OneOf(["gradcam"]),
        metadata={"description": "`gradcam`: add a heatmap per image (slower, unbatched)."},
    )


class PredictJsonSchema(PredictOptionsSchema):
    """``application/json`` body of ``POST /jobs/predict``."""

    images = fields.List(
        fields.String(),
        required=True,
        validate=validate.Length(min=1),
        metadata={"description": "Base64-encoded images."},
    )


class PredictMultipartSchema(PredictOptionsSchema):
    """``multipart/form-data`` body of ``POST /jobs/predict`` (documentation only)."""

    image = fields.List(
        fields.Raw(metadata={"type": "string", "format": "binary"}),
        required=True,
        metadata={"description": "One or more image file parts."},
    )


class JobCreatedSchema(Schema):
    """Answer to an accepted job."""

    id = fields.String(required=True)
    status = fields.Enum(JobStatus, by_value=True, required=True)


class PredictionSchema(Schema):
    """One label of an image's top-k."""

    label = fields.String()
    index = fields.Integer()
    score = fields.Float()


class PredictResultSchema(Schema):
    """``result`` of a succeeded predict job: one top-k list per image, in request order."""

    model = fields.String()
    version = fields.Integer()
    predictions = fields.List(fields.List(fields.Nested(PredictionSchema)))


class ErrorBodySchema(Schema):
    """The inner error object."""

    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Raw()


class ErrorEnvelopeSchema(Schema):
    """Every error response: ``{"error": {"code", "message", "details"?}}``."""

    error = fields.Nested(ErrorBodySchema, required=True)


class JobSchema(Schema):
    """``GET /jobs/<id>``."""

    id = fields.String(required=True)
    type = fields.Enum(JobType, by_value=True, required=True)
    status = fields.Enum(JobStatus, by_value=True, required=True)
    created_at = fields.String(allow_none=True)
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    result = fields.Raw(allow_none=True, metadata={"description": "See PredictResult."})
    webhook = fields.Raw(
        allow_none=True,
        metadata={"description": "Delivery of the job's callback: url, state, attempts."},
    )
    progress = fields.Raw(
        allow_none=True,
        metadata={"description": "Fine-tune progress: phase, epoch, total_epochs, losses, eta_s."},
    )
    error = fields.Nested(ErrorBodySchema, allow_none=True)


MAX_WAIT_S = 60
"""Longest a request may be held for a job to end (``?wait=`` and ``Prefer: wait=``)."""


class JobQuerySchema(Schema):
    """Query of ``GET /jobs/<id>``."""

    wait = fields.Float(
        load_default=0.0,
        validate=validate.Range(min=0, max=MAX_WAIT_S),
        metadata={"description": "Seconds to hold the request until the job ends (long poll)."},
    )


class JobListQuerySchema(Schema):
    """Query of ``GET /jobs``."""

    status = fields.Enum(JobStatus, by_value=True)
    type = fields.Enum(JobType, by_value=True)
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(
        validate=validate.Regexp(r"^[0-9]+(\.[0-9]+)?$"),
        metadata={"description": "`next_cursor` of the previous page."},
    )


class JobListSchema(Schema):
    """A page of jobs, newest first."""

    jobs = fields.List(fields.Nested(JobSchema))
    next_cursor = fields.String(allow_none=True)


class HealthSchema(Schema):
    """Health and readiness answers."""

    status = fields.String(required=True)
