"""The retraining loop's routes: retrain a model, put a version in canary, set the policy.

``POST /models/<name>/retrain`` queues a fine-tune that continues the active version on the
model's grown dataset (``ml.retrain``); it is never activated by the gate. A canary sends a
share of the model's unpinned jobs to one version (``workers.model_cache`` routes them), and the
monitoring documents compare both versions on the feedback of that traffic (``ml.canary``). A
policy lets the webhooks workers do all of it (``workers.rollout``). Every change is in the
model's event log and, for rollout events, sent to the model's callback URL.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response
from flask_smorest import Blueprint

from api.auth import current_client
from api.idempotency import replay_or_claim
from api.model_access import OWNER_PARAMETER, describe, owned_model, version_of
from api.quotas import admit
from api.rollout_schemas import CanarySchema, PolicySchema, RetrainSchema
from api.schemas import ErrorEnvelopeSchema, ModelSchema
from api.services import services
from api.submission import enqueue_or_undo, submission_endpoint
from imgq.errors import NotFound, VersionIsActive
from imgq.jobs.idempotency import fingerprint
from imgq.jobs.status import JobType
from imgq.jobs.store import new_job_id
from imgq.model_events import ModelEvent, announce_activation, model_event, publish
from imgq.queueing import FINETUNE_TASK, TRAIN_QUEUE
from imgq.quotas import JobKind
from imgq.redis_keys import ROLLOUT_MODELS
from imgq.webhooks.callback_urls import check_callback_url
from imgq.webhooks.events import WebhookEvents
from ml.registry import split_model_id
from ml.retrain import retrain_params

blp = Blueprint("rollout", __name__, url_prefix="/models", description="Retraining and rollout")


def publish_event(model: str, event: dict[str, Any]) -> None:
    """Log a model event and send it to the model's callback URL (see ``publish``)."""
    svc = services()
    owner, name = split_model_id(model)
    publish(
        event,
        record=lambda entry: svc.registry.record_event(model, entry),
        webhooks=WebhookEvents(svc.redis, svc.settings.job_ttl_s),
        callback_url=svc.registry.model_settings(model).get("callback_url"),
        owner=str(owner),
        model=name,
    )


@submission_endpoint(blp, "/<string:name>/retrain", arguments=RetrainSchema)
def retrain_model(
    body: dict[str, Any], name: str
) -> tuple[dict[str, Any], int, dict[str, str]] | Response:
    """Queue a retrain: a fine-tune of the latest version of the model's dataset, from the
    active version and its parameters (owner or admin). It is never activated on its own."""
    svc = services()
    model = owned_model(name)
    force = body.pop("force")
    callback = body.pop("callback_url", None)
    if callback is not None:
        check_callback_url(callback, svc.settings.webhook_allow_private, svc.settings.webhook_ports)
    params = retrain_params(svc.registry, svc.datasets, model, body, force=force)
    job_id = new_job_id()
    replay = replay_or_claim(fingerprint(json.dumps(params, sort_keys=True)), job_id)
    if replay is not None:
        return replay
    admit(job_id, JobKind.LONG)
    svc.jobs.create_job(
        job_id, JobType.FINETUNE, params, client=current_client().client, callback_url=callback
    )
    publish_event(
        model,
        model_event(
            ModelEvent.RETRAIN_STARTED,
            current_client().client,
            reason="asked for",
            details={"job_id": job_id, "dataset_version": params["dataset_version"]},
        ),
    )
    return enqueue_or_undo(
        job_id,
        JobType.FINETUNE,
        lambda: svc.celery.send_task(FINETUNE_TASK, args=[job_id], queue=TRAIN_QUEUE),
    )


@blp.route(
    "/<string:name>/versions/<int:version>/canary", methods=["POST"], parameters=[OWNER_PARAMETER]
)
@blp.arguments(CanarySchema)
@blp.response(200, ModelSchema)
@blp.alt_response(403, schema=ErrorEnvelopeSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
@blp.alt_response(409, schema=ErrorEnvelopeSchema)
def start_canary(body: dict[str, Any], name: str, version: int) -> dict[str, Any]:
    """Send ``traffic`` of the model's unpinned jobs to ``version`` (owner or admin); prediction
    workers load it first. Changing the traffic of the running canary keeps its start."""
    svc = services()
    model = owned_model(name)
    version_of(model, version)
    if svc.registry.active_version(model) == version:
        raise VersionIsActive(
            f"Version {version} of {name!r} is active; a canary must be another version.",
            {"model": name, "version": version},
        )
    before = svc.registry.canary(model)
    canary = svc.registry.start_canary(model, version, body["traffic"], current_client().client)
    announce_activation(svc.redis, model)
    if before is not None and before["version"] != version:
        publish_event(model, canary_ended(before, "replaced by another canary"))
    same = before is not None and before["version"] == version
    event = ModelEvent.CANARY_CHANGED if same else ModelEvent.CANARY_STARTED
    details = {"traffic": canary["traffic"], "previous_traffic": (before or {}).get("traffic")}
    publish_event(
        model, model_event(event, current_client().client, version=version, details=details)
    )
    return describe(model, with_training=True)


def canary_ended(canary: dict[str, Any], reason: str) -> dict[str, Any]:
    """The event of a canary that ended, by the caller, for ``reason``."""
    return model_event(
        ModelEvent.CANARY_ENDED,
        current_client().client,
        version=int(canary["version"]),
        reason=reason,
        details={"traffic": canary["traffic"], "started_at": canary["started_at"]},
    )


@blp.route(
    "/<string:name>/versions/<int:version>/canary",
    methods=["DELETE"],
    parameters=[OWNER_PARAMETER],
)
@blp.response(204)
@blp.alt_response(403, schema=ErrorEnvelopeSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def stop_canary(name: str, version: int) -> None:
    """End the model's canary of ``version``: every unpinned job goes to the active version."""
    svc = services()
    model = owned_model(name)
    canary = svc.registry.canary(model)
    if canary is None or int(canary["version"]) != version:
        raise NotFound(
            f"Version {version} of {name!r} is not in canary.", {"model": name, "version": version}
        )
    svc.registry.end_canary(model)
    announce_activation(svc.redis, model)
    publish_event(model, canary_ended(canary, "stopped"))


@blp.route("/<string:name>/policy", methods=["PUT"], parameters=[OWNER_PARAMETER])
@blp.arguments(PolicySchema)
@blp.response(200, PolicySchema)
@blp.alt_response(403, schema=ErrorEnvelopeSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def put_policy(policy: dict[str, Any], name: str) -> dict[str, Any]:
    """Set the model's rollout policy (owner or admin): the webhooks workers then retrain,
    canary and (with ``promote: auto``) promote or end canaries on their own."""
    svc = services()
    model = owned_model(name)
    svc.registry.update_model_settings(model, {"policy": policy})
    svc.redis.sadd(ROLLOUT_MODELS, model)
    publish_event(
        model, model_event(ModelEvent.POLICY_CHANGED, current_client().client, details=policy)
    )
    return policy


@blp.route("/<string:name>/policy", parameters=[OWNER_PARAMETER])
@blp.response(200, PolicySchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def get_policy(name: str) -> dict[str, Any]:
    """The model's rollout policy (404 when it has none: nothing happens on its own)."""
    model = owned_model(name)
    policy = services().registry.model_settings(model).get("policy")
    if policy is None:
        raise NotFound(f"Model {name!r} has no rollout policy.", {"model": name})
    return dict(policy)


@blp.route("/<string:name>/policy", methods=["DELETE"], parameters=[OWNER_PARAMETER])
@blp.response(204)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def delete_policy(name: str) -> None:
    """Turn the model's rollout policy off; a canary it started keeps running until ended."""
    svc = services()
    model = owned_model(name)
    svc.registry.update_model_settings(model, {"policy": None})
    svc.redis.srem(ROLLOUT_MODELS, model)
    publish_event(
        model, model_event(ModelEvent.POLICY_CHANGED, current_client().client, details=None)
    )
