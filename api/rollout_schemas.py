"""Schemas of retrains, canaries and rollout policies (``api.rollout``)."""

from __future__ import annotations

import copy
from typing import Any

from marshmallow import Schema, fields, missing, validate

from api.schemas import FinetuneFormSchema

TRAINING_FIELDS = (
    "epochs",
    "fine_tune_epochs",
    "unfreeze",
    "learning_rate",
    "fine_tune_learning_rate",
    "batch_size",
    "augment",
    "seed",
    "dropout",
    "patience",
    "callback_url",
)
"""Fields of ``POST /jobs/finetune`` a retrain may override (same limits)."""

MAX_CANARY_TRAFFIC = 0.5
"""Largest share of unpinned jobs a canary may take."""


def _overrides() -> dict[str, Any]:
    """The fine-tune form's training fields, without their defaults: a retrain keeps the
    active version's parameters unless the body names one."""
    found = {}
    for name in TRAINING_FIELDS:
        field = copy.deepcopy(FinetuneFormSchema._declared_fields[name])
        field.load_default = missing
        found[name] = field
    return found


RetrainSchema = Schema.from_dict(
    {
        **_overrides(),
        "force": fields.Boolean(
            load_default=False,
            metadata={"description": "Retrain even when the dataset has not changed."},
        ),
    },
    name="RetrainSchema",
)
"""Body of ``POST /models/<name>/retrain``."""


class CanarySchema(Schema):
    """Body of ``POST /models/<name>/versions/<v>/canary``."""

    traffic = fields.Float(
        required=True,
        validate=validate.Range(min=0, max=MAX_CANARY_TRAFFIC, min_inclusive=False),
        metadata={"description": "Share of unpinned jobs sent to the version (0 < t <= 0.5)."},
    )


class CanaryStateSchema(Schema):
    """A running canary."""

    version = fields.Integer(required=True)
    traffic = fields.Float(required=True)
    started_at = fields.Float(required=True)
    by = fields.String()


class PolicySchema(Schema):
    """``PUT /models/<name>/policy``: when to retrain and how to roll the result out."""

    retrain_after_feedback = fields.Integer(
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=1),
        metadata={"description": "Retrain once this many labelled images came from feedback."},
    )
    retrain_on_drift = fields.Boolean(
        load_default=False, metadata={"description": "Retrain when the active version drifts."}
    )
    canary_traffic = fields.Float(
        load_default=0.1,
        validate=validate.Range(min=0, max=MAX_CANARY_TRAFFIC, min_inclusive=False),
        metadata={"description": "Share of unpinned jobs a retrained version gets as canary."},
    )
    promote = fields.String(
        load_default="manual",
        validate=validate.OneOf(["manual", "auto"]),
        metadata={"description": "`auto`: promote or end the canary by its verdict."},
    )
    min_canary_feedback = fields.Integer(
        load_default=200,
        validate=validate.Range(min=1),
        metadata={"description": "Labels on the canary's jobs before its verdict counts."},
    )
    max_canary_hours = fields.Float(
        load_default=72.0,
        validate=validate.Range(min=0, min_inclusive=False),
        metadata={"description": "A canary still undecided after this long is ended."},
    )
