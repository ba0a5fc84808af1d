"""Model registry endpoints: list models and versions, activate (promote or roll back), share.

Which model a name means, and who may do what with it, is decided in ``api.model_access``.
"""

from __future__ import annotations

from typing import Any

from flask import Response
from flask_smorest import Blueprint

from api.auth import current_client, require_admin
from api.jobs import send_artifact
from api.model_access import (
    OWNER_PARAMETER,
    describe,
    owned_model,
    version_of,
    visible_model,
    visible_models,
)
from api.rollout import canary_ended, publish_event
from api.schemas import (
    ErrorEnvelopeSchema,
    ModelEventsQuerySchema,
    ModelEventsSchema,
    ModelPatchSchema,
    ModelSchema,
)
from api.services import services
from api.storage import owner_storage_bytes
from imgq.errors import Conflict, NotFound, VersionIsActive
from imgq.model_events import ModelEvent, announce_activation, model_event
from imgq.webhooks.callback_urls import check_callback_url
from ml.registry import split_model_id

blp = Blueprint("models", __name__, url_prefix="/models", description="Model registry")


@blp.route("")
@blp.response(200, ModelSchema(many=True))
def list_models() -> list[dict[str, Any]]:
    """Your models and the shared ones (an admin's: every model), without training details,
    each with its owner's bytes on the store (models and datasets)."""
    found = [describe(model, with_training=False) for model in visible_models()]
    totals = owner_storage_bytes({str(model["owner"]) for model in found})
    return [{**model, "owner_storage_bytes": totals[str(model["owner"])]} for model in found]


@blp.route("/<string:name>", parameters=[OWNER_PARAMETER])
@blp.response(200, ModelSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def get_model(name: str) -> dict[str, Any]:
    """One model: versions, metrics, training parameters, which version is active."""
    return describe(visible_model(name), with_training=True)


@blp.route("/<string:name>", methods=["PATCH"], parameters=[OWNER_PARAMETER])
@blp.arguments(ModelPatchSchema)
@blp.response(200, ModelSchema)
@blp.alt_response(403, schema=ErrorEnvelopeSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
@blp.alt_response(409, schema=ErrorEnvelopeSchema)
def update_model(changes: dict[str, Any], name: str) -> dict[str, Any]:
    """Change a model's settings: ``shared`` (admins only), ``callback_url`` and
    ``retain_images`` (its owner or an admin)."""
    registry = services().registry
    model = owned_model(name)
    if "shared" in changes:
        require_admin()  # before anything changes
    settings: dict[str, Any] = {
        k: changes[k] for k in ("callback_url", "retain_images") if k in changes
    }
    if settings:
        if settings.get("callback_url") is not None:
            config = services().settings
            check_callback_url(
                settings["callback_url"], config.webhook_allow_private, config.webhook_ports
            )
        registry.update_model_settings(model, settings)
        registry.record_event(
            model,
            model_event(ModelEvent.SETTINGS_CHANGED, current_client().client, details=settings),
        )
    if "shared" in changes:
        other = registry.shared_model(name)
        if changes["shared"] and other not in (None, model):
            owner, _ = split_model_id(str(other))
            raise Conflict(
                f"A shared model is already called {name!r} (owned by {owner!r}).",
                {"model": name, "owner": owner},
            )
        if changes["shared"] != registry.is_shared(model):
            registry.set_shared(model, changes["shared"])
            event = ModelEvent.SHARED if changes["shared"] else ModelEvent.UNSHARED
            registry.record_event(model, model_event(event, current_client().client))
    return describe(model, with_training=True)


@blp.route(
    "/<string:name>/versions/<int:version>/activate",
    methods=["POST"],
    parameters=[OWNER_PARAMETER],
)
@blp.response(200, ModelSchema)
@blp.alt_response(403, schema=ErrorEnvelopeSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def activate_version(name: str, version: int) -> dict[str, Any]:
    """Make ``version`` the one unpinned predictions get (owners and admins); workers swap
    within moments."""
    svc = services()
    model = owned_model(name)
    version_of(model, version)
    previous = svc.registry.active_version(model)
    canary = svc.registry.canary(model)
    svc.registry.activate(model, version)  # ends any canary
    announce_activation(svc.redis, model)
    event = ModelEvent.ROLLED_BACK if version < previous else ModelEvent.ACTIVATED
    details = {"previous_version": previous}
    svc.registry.record_event(
        model, model_event(event, current_client().client, version=version, details=details)
    )
    if canary is not None:
        publish_event(model, canary_ended(canary, f"version {version} was activated"))
    return describe(model, with_training=True)


@blp.route("/<string:name>", methods=["DELETE"], parameters=[OWNER_PARAMETER])
@blp.response(204)
@blp.alt_response(403, schema=ErrorEnvelopeSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def delete_model(name: str) -> None:
    """Delete a model with every version and export (its owner or an admin); prediction
    workers stop serving it."""
    svc = services()
    model = owned_model(name)
    svc.registry.delete_model(model)
    announce_activation(svc.redis, model)  # workers re-read it, find it gone and drop it


@blp.route(
    "/<string:name>/versions/<int:version>", methods=["DELETE"], parameters=[OWNER_PARAMETER]
)
@blp.response(204)
@blp.alt_response(403, schema=ErrorEnvelopeSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
@blp.alt_response(409, schema=ErrorEnvelopeSchema)
def delete_version(name: str, version: int) -> None:
    """Delete a version that is not the active one, with its exports (owner or admin)."""
    svc = services()
    model = owned_model(name)
    version_of(model, version)
    if svc.registry.active_version(model) == version:
        raise VersionIsActive(
            f"Version {version} of {name!r} is active; activate another version first.",
            {"model": name, "version": version},
        )
    svc.registry.delete_version(model, version)
    svc.registry.record_event(
        model, model_event(ModelEvent.VERSION_DELETED, current_client().client, version=version)
    )


@blp.route("/<string:name>/events", parameters=[OWNER_PARAMETER])
@blp.arguments(ModelEventsQuerySchema, location="query")
@blp.response(200, ModelEventsSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def list_model_events(query: dict[str, Any], name: str) -> dict[str, Any]:
    """The model's history, newest first: every publish, activation, rollback, share change
    and deletion, with the client that did it (``system`` for the activation gate)."""
    events, cursor = services().registry.events(
        visible_model(name), query["limit"], query.get("cursor")
    )
    return {"events": events, "next_cursor": cursor}


@blp.route(
    "/<string:name>/versions/<int:version>/artifacts/<string:file_name>",
    parameters=[OWNER_PARAMETER],
)
@blp.response(200, description="The file (PNG plot or JSON report).")
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def get_version_artifact(name: str, version: int, file_name: str) -> Response:
    """A trained version's evaluation report or plots; versions outlive the jobs that made
    them, so their files have an address of their own."""
    model = visible_model(name)
    meta = version_of(model, version)
    if file_name not in meta.artifacts:
        raise NotFound(
            f"Version {version} of {name!r} has no artifact {file_name!r}.",
            {"model": name, "version": version, "name": file_name, "artifacts": meta.artifacts},
        )
    content = services().registry.read_file(model, version, file_name)
    return send_artifact(content, file_name)
