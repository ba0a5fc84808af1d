"""Model registry endpoints: list models and versions, activate (promote or roll back)."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from api.auth import require_admin
from api.schemas import ErrorEnvelopeSchema, ModelSchema
from api.services import services
from imgq.model_events import announce_activation

blp = Blueprint("models", __name__, url_prefix="/models", description="Model registry")


def _describe(name: str, with_training: bool) -> dict[str, Any]:
    registry = services().registry
    active = registry.active_version(name)
    versions = []
    for number in registry.versions(name):
        version = registry.get(name, number).to_dict()
        if not with_training:
            version.pop("training", None)
        versions.append({**version, "active": number == active})
    return {"name": name, "active_version": active, "versions": versions}


@blp.route("")
@blp.response(200, ModelSchema(many=True))
def list_models() -> list[dict[str, Any]]:
    """Every model with its versions (without training details)."""
    return [_describe(name, with_training=False) for name in services().registry.models()]


@blp.route("/<string:name>")
@blp.response(200, ModelSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def get_model(name: str) -> dict[str, Any]:
    """One model: versions, metrics, training parameters, which version is active."""
    return _describe(name, with_training=True)


@blp.route("/<string:name>/versions/<int:version>/activate", methods=["POST"])
@blp.response(200, ModelSchema)
@blp.alt_response(403, schema=ErrorEnvelopeSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def activate_version(name: str, version: int) -> dict[str, Any]:
    """Make ``version`` the one unpinned predictions get; workers swap within moments."""
    require_admin()
    svc = services()
    svc.registry.activate(name, version)
    announce_activation(svc.redis, name)
    return _describe(name, with_training=True)
