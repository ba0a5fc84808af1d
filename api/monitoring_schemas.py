"""Schemas of feedback and monitoring (``api.feedback``, ``api.monitoring``)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

MAX_WINDOW = 100_000
"""Largest ``window`` a monitoring request may ask for (the kept window caps it too)."""


class FeedbackSchema(Schema):
    """Body of ``POST /jobs/<id>/feedback``."""

    labels = fields.List(
        fields.String(allow_none=True, validate=validate.Length(min=1, max=200)),
        required=True,
        validate=validate.Length(min=1, max=1000),
        metadata={"description": "The true label of each image, in image order (null: unknown)."},
    )
    add_to_dataset = fields.Boolean(
        load_default=False,
        metadata={
            "description": "Also add the labelled images to the model's dataset (owner only; "
            "the job must have retained its images)."
        },
    )


class FeedbackDatasetSchema(Schema):
    """The dataset version feedback made."""

    name = fields.String(required=True)
    version = fields.Integer(required=True)
    added = fields.Integer(required=True, metadata={"description": "Labelled images added."})


class FeedbackResultSchema(Schema):
    """The feedback of a job as stored."""

    id = fields.String(required=True)
    model = fields.String(required=True)
    version = fields.Integer(required=True)
    labels = fields.List(fields.String(allow_none=True), required=True)
    correct = fields.List(
        fields.Boolean(allow_none=True),
        required=True,
        metadata={"description": "Per image: whether the top-1 prediction was right."},
    )
    dataset = fields.Nested(FeedbackDatasetSchema)


class MonitoringQuerySchema(Schema):
    """Query of ``GET /models/<name>/versions/<v>/monitoring``."""

    owner = fields.String(validate=validate.Length(min=1, max=200))
    window = fields.Integer(
        load_default=1000,
        validate=validate.Range(min=1, max=MAX_WINDOW),
        metadata={"description": "Newest predictions to test (at most the window kept)."},
    )


class DriftTestSchema(Schema):
    """What every drift test reports (all null when it could not run)."""

    statistic = fields.Float(allow_none=True)
    p_value = fields.Float(allow_none=True)
    drifted = fields.Boolean(allow_none=True)


class ClassDriftSchema(DriftTestSchema):
    """Chi-square test of the predicted classes."""

    observed = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    reference = fields.Dict(keys=fields.String(), values=fields.Float(), allow_none=True)


class ConfidenceHistogramSchema(Schema):
    """Top-1 confidences of the window and of the reference, in equal bins of [0, 1]."""

    edges = fields.List(fields.Float(), required=True, metadata={"description": "Bin edges."})
    observed = fields.List(
        fields.Integer(), required=True, metadata={"description": "Predictions per bin."}
    )
    reference = fields.List(
        fields.Float(),
        allow_none=True,
        metadata={"description": "Share of the test split per bin (null: no reference)."},
    )


class ConfidenceDriftSchema(DriftTestSchema):
    """Kolmogorov-Smirnov test of the top-1 confidences."""

    observed_mean = fields.Float(allow_none=True)
    reference_mean = fields.Float(allow_none=True)
    histogram = fields.Nested(ConfidenceHistogramSchema)


class ClassAccuracySchema(Schema):
    """Feedback on one true class."""

    count = fields.Integer(required=True)
    correct = fields.Integer(required=True)
    accuracy = fields.Float(required=True)


class OnlineAccuracySchema(Schema):
    """Feedback received for the window's predictions."""

    count = fields.Integer(required=True)
    correct = fields.Integer(required=True)
    accuracy = fields.Float(allow_none=True)
    per_class = fields.Dict(
        keys=fields.String(), values=fields.Nested(ClassAccuracySchema), required=True
    )
    accuracy_series = fields.List(
        fields.Float(allow_none=True),
        metadata={"description": "Accuracy in consecutive slices of the window, oldest first."},
    )


class MonitoringSchema(Schema):
    """``GET /models/<name>/versions/<v>/monitoring``."""

    model = fields.String(required=True)
    version = fields.Integer(required=True)
    window = fields.Integer(required=True)
    predictions = fields.Integer(required=True, metadata={"description": "In the window."})
    classes = fields.Nested(ClassDriftSchema, required=True)
    confidence = fields.Nested(ConfidenceDriftSchema, required=True)
    feedback = fields.Nested(OnlineAccuracySchema, required=True)
    drifted = fields.Boolean(
        allow_none=True, metadata={"description": "Either test reports drift (null: no test)."}
    )
    test_accuracy = fields.Float(allow_none=True)
    canary = fields.Dict(
        metadata={
            "description": "While a canary runs (in both versions' documents): `{version, "
            "active_version, traffic, started_at, active, candidate, difference, interval, "
            "p_value, test, drift, verdict}`; `verdict` is `better`, `worse` or `undecided`."
        }
    )
