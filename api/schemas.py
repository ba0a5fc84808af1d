"""Request and response schemas: validation at the edge and the OpenAPI document, in one place."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from imgq.jobs.status import JobStatus, JobType
from ml.backbone_specs import BACKBONE_SIZES
from ml.dataset_ingest import DataMode
from ml.export_formats import FORMATS
from ml.registry import MODEL_NAME

DATASET_VERSION_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}:[0-9]{1,9}$"
"""``name:version`` of a stored dataset."""

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

    owner = fields.String(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "Admins: the client whose model this is."},
    )
    top_k = WholeNumber(
        validate=validate.Range(min=1, max=MAX_TOP_K),
        metadata={"description": "Labels returned per image (default 5)."},
    )
    model = fields.String(
        validate=validate.Regexp(MODEL_NAME.pattern),
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
    retain = fields.Boolean(
        metadata={
            "description": "Keep the images (on the model store, while the job lives) so that "
            "feedback can add them to the model's dataset; your own models only "
            "(default: the model's `retain_images`)."
        },
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
    result = fields.Raw(
        allow_none=True,
        metadata={
            "description": "predict: `{model, version, predictions}` (one top-k list per image);"
            " fine-tune: the new version, its metrics, dataset version and artifacts; export:"
            " the report; ingest: the new dataset version and what the upload added."
        },
    )
    webhook = fields.Raw(
        allow_none=True,
        metadata={
            "description": "Delivery of the job's callback: url, state (pending, retrying,"
            " delivered, failed, disabled), attempts, event_id, webhook_id, next_attempt_at,"
            " disabled_reason."
        },
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
        validate=validate.Regexp(r"^[0-9]+(\.[0-9]+)?(:[0-9a-f]{32})?$"),
        metadata={"description": "`next_cursor` of the previous page (opaque)."},
    )


class JobListSchema(Schema):
    """A page of jobs, newest first."""

    jobs = fields.List(fields.Nested(JobSchema))
    next_cursor = fields.String(allow_none=True)


class HealthSchema(Schema):
    """Health and readiness answers."""

    status = fields.String(required=True)


AUTO = "auto"
"""A training parameter left for the job to choose from the data (``ml.auto_config``)."""


class AutoOr(fields.Field[Any]):
    """``auto``, or a value the wrapped field accepts: a parameter the data may choose.

    Every value of a multipart form is a string, so ``"auto"`` is told apart before the wrapped
    field parses the rest; the OpenAPI document says both forms (``oneOf``).
    """

    def __init__(self, inner: fields.Field[Any], **kwargs: Any) -> None:
        self.inner = inner
        inner_type = {
            fields.Integer: "integer",
            fields.Float: "number",
            fields.Boolean: "boolean",
        }
        kind = next((t for cls, t in inner_type.items() if isinstance(inner, cls)), "string")
        metadata = kwargs.pop("metadata", {})
        choice: dict[str, Any] = {"type": kind}
        if isinstance(inner, fields.String) and inner.validators:
            choice["enum"] = list(getattr(inner.validators[0], "choices", []))
        kwargs.setdefault("load_default", AUTO)
        super().__init__(
            metadata={"oneOf": [{"type": "string", "enum": [AUTO]}, choice], **metadata},
            **kwargs,
        )

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> Any:
        if value == AUTO:
            return AUTO
        return self.inner.deserialize(value, attr, data, **kwargs)


class FinetuneFormSchema(Schema):
    """Fields of ``POST /jobs/finetune`` besides the ``dataset`` file."""

    model = fields.String(required=True, validate=validate.Regexp(MODEL_NAME.pattern))
    owner = fields.String(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "Admins: the client whose model this is."},
    )
    base = fields.String(
        load_default="efficientnet_lite0",
        validate=validate.Regexp(r"^[a-z0-9_-]+(:[0-9]+)?$"),
        metadata={"description": "A backbone name, or `model:version` to continue from."},
    )
    image_size = fields.Integer(validate=validate.Range(min=32, max=600))
    epochs = AutoOr(
        fields.Integer(validate=validate.Range(min=1, max=500)),
        metadata={"description": "Head epochs (early stopping may end them sooner)."},
    )
    fine_tune_epochs = AutoOr(fields.Integer(validate=validate.Range(min=0, max=500)))
    unfreeze = AutoOr(fields.Float(validate=validate.Range(min=0, max=1)))
    learning_rate = AutoOr(fields.Float(validate=validate.Range(min=1e-7, max=1)))
    fine_tune_learning_rate = AutoOr(fields.Float(validate=validate.Range(min=1e-9, max=1e-1)))
    batch_size = fields.Integer(load_default=32, validate=validate.Range(min=1, max=1024))
    augment = AutoOr(fields.Boolean())
    seed = fields.Integer(load_default=0, validate=validate.Range(min=0, max=2**31 - 1))
    dropout = fields.Float(load_default=0.2, validate=validate.Range(min=0, max=0.9))
    patience = AutoOr(fields.Integer(validate=validate.Range(min=1, max=100)))
    pooling = AutoOr(
        fields.String(validate=validate.OneOf(["avg", "grid"])),
        metadata={"description": "`avg`: global average pooling; `grid`: a 2 x 2 grid of it."},
    )
    label_smoothing = AutoOr(fields.Float(validate=validate.Range(min=0, max=0.5)))
    mixup = AutoOr(
        fields.Float(validate=validate.Range(min=0, max=2)),
        metadata={"description": "Mixup's Beta alpha on cached features; 0 is off."},
    )
    tta = AutoOr(
        fields.Boolean(),
        metadata={"description": "Test-time flip: serve the mean over an image and its mirror."},
    )
    budget_s = fields.Integer(
        validate=validate.Range(min=10, max=86400),
        metadata={
            "description": "Seconds to spend trying configurations on cached features (the "
            "validation split chooses); the result lists the trials."
        },
    )
    teacher = fields.String(
        validate=validate.Regexp(r"^[a-z0-9_-]+:[0-9]+$"),
        metadata={"description": "`model:version` to distil from (same classes)."},
    )
    distill_alpha = fields.Float(
        load_default=0.5,
        validate=validate.Range(min=0, max=1),
        metadata={"description": "With `teacher`: the weight of its soft labels."},
    )
    distill_temperature = fields.Float(
        load_default=4.0,
        validate=validate.Range(min=1, max=20),
        metadata={"description": "With `teacher`: the softmax temperature."},
    )
    calibrate = fields.Boolean(
        load_default=True,
        metadata={
            "description": "Fit a temperature on the validation split and serve the tempered "
            "probabilities when it lowers their calibration error."
        },
    )
    callback_url = fields.String(
        validate=validate.Length(max=2048),
        metadata={"description": "Called (signed POST of the job) when the job ends."},
    )
    dataset_name = fields.String(
        validate=validate.Regexp(MODEL_NAME.pattern),
        metadata={
            "description": "The dataset the upload is stored in (default: the model's name); "
            "without an upload, train on its latest version."
        },
    )
    data_mode = fields.Enum(
        DataMode,
        by_value=True,
        load_default=DataMode.REPLACE,
        metadata={
            "description": "`replace`: the upload alone is the dataset's next version; "
            "`append`: the upload is added to its latest version."
        },
    )
    dataset_version = fields.String(
        validate=validate.Regexp(DATASET_VERSION_PATTERN),
        metadata={"description": "`name:version` of a stored dataset to train on (no upload)."},
    )

    @validates_schema
    def _base_is_known(self, data: dict[str, Any], **_: Any) -> None:
        base = data.get("base", "")
        if ":" not in base and base not in BACKBONE_SIZES:
            raise ValidationError(
                f"Unknown backbone; expected one of {sorted(BACKBONE_SIZES)} or `model:version`.",
                "base",
            )


class ModelVersionSchema(Schema):
    """One immutable version."""

    name = fields.String()
    version = fields.Integer()
    kind = fields.String()
    backbone = fields.String()
    image_size = fields.Integer()
    labels = fields.Raw()
    created_at = fields.Float()
    metrics = fields.Raw()
    training = fields.Raw()
    dataset = fields.Raw(
        allow_none=True,
        metadata={
            "description": "The dataset version it was trained on: `{name, version, "
            "fingerprint}` (None for the built-in and for versions older than datasets)."
        },
    )
    artifacts = fields.List(fields.String())
    active = fields.Boolean()


class ModelSchema(Schema):
    """A model and its versions."""

    name = fields.String()
    owner = fields.String(metadata={"description": "The client whose key created the model."})
    shared = fields.Boolean(metadata={"description": "Every client may predict with it."})
    active_version = fields.Integer()
    storage_bytes = fields.Integer(
        metadata={"description": "Bytes on the model store: versions, exports, event log."}
    )
    callback_url = fields.String(
        allow_none=True, metadata={"description": "Where the model's events are sent."}
    )
    retain_images = fields.Boolean(
        metadata={"description": "Predict jobs keep their images by default."}
    )
    canary = fields.Dict(
        allow_none=True,
        metadata={"description": "The running canary: `{version, traffic, started_at, by}`."},
    )
    policy = fields.Dict(
        allow_none=True, metadata={"description": "The rollout policy (`PUT .../policy`)."}
    )
    owner_storage_bytes = fields.Integer(
        metadata={"description": "In `GET /models`: bytes the owner's models and datasets take."}
    )
    versions = fields.List(fields.Nested(ModelVersionSchema))


class ModelPatchSchema(Schema):
    """Body of ``PATCH /models/<name>``: the model's settings that can change."""

    shared = fields.Boolean(
        metadata={"description": "Let every client use the model (admins only)."}
    )
    callback_url = fields.String(
        allow_none=True,
        validate=validate.Length(max=2048),
        metadata={
            "description": "Where the model's events are sent (`model.drift_detected`), signed "
            "like job webhooks; null removes it."
        },
    )
    retain_images = fields.Boolean(
        metadata={"description": "Keep the images of every predict job of yours by default."}
    )


class ModelEventsQuerySchema(Schema):
    """Query of ``GET /models/<name>/events``."""

    owner = fields.String(validate=validate.Length(min=1, max=200))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(
        validate=validate.Regexp(r"^[0-9]{13}\.[0-9]{6}-[0-9a-f]{12}\.json$"),
        metadata={"description": "`next_cursor` of the previous page (opaque)."},
    )


class ModelEventSchema(Schema):
    """One entry of a model's event log."""

    at = fields.Float(metadata={"description": "Unix time."})
    event = fields.String(
        metadata={
            "description": "published, activated, rolled_back, shared, unshared, version_deleted."
        }
    )
    by = fields.String(metadata={"description": "The client that did it, or `system`."})
    version = fields.Integer(allow_none=True)
    reason = fields.String(allow_none=True)
    details = fields.Raw(allow_none=True)


class ModelEventsSchema(Schema):
    """A page of a model's event log, newest first."""

    events = fields.List(fields.Nested(ModelEventSchema))
    next_cursor = fields.String(allow_none=True)


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
