"""Model registry endpoints: list models and versions, activate (promote or roll back), share.

Which model a name means, and who may do what with it, is decided in ``api.model_access``.
"""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from api.auth import require_admin
from api.model_access import (
    OWNER_PARAMETER,
    describe,
    owned_model,
    version_of,
    visible_model,
    visible_models,
)
from api.schemas import ErrorEnvelopeSchema, ModelPatchSchema, ModelSchema
from api.services import services
from imgq.errors import Conflict
from imgq.model_events import announce_activation
from ml.registry import split_model_id

blp = Blueprint("models", __name__, url_prefix="/models", description="Model registry")


@blp.route("")
@blp.response(200, ModelSchema(many=True))
def list_models() -> list[dict[str, Any]]:
    """Your models and the shared ones (an admin's: every model), without training details."""
    return [describe(model, with_training=False) for model in visible_models()]


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
    """Share a model with every client, or stop sharing it (admins only)."""
    require_admin()
    registry = services().registry
    model = visible_model(name)
    if "shared" in changes:
        other = registry.shared_model(name)
        if changes["shared"] and other not in (None, model):
            owner, _ = split_model_id(str(other))
            raise Conflict(
                f"A shared model is already called {name!r} (owned by {owner!r}).",
                {"model": name, "owner": owner},
            )
        registry.set_shared(model, changes["shared"])
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
    svc.registry.activate(model, version)
    announce_activation(svc.redis, model)
    return describe(model, with_training=True)
