"""Which model a request means, and whether the caller may use it: ownership in one place.

Every model belongs to the client whose key created it and lives in that client's namespace
of the registry (``@<client>/<name>``), so two clients' ``pets`` are two models. A name
resolves to the caller's own model, else to a shared model of that name (the built-in
``imagenet``, or one an admin shared). Admins reach another client's model with ``owner=``
(query or form field). Another client's model is answered exactly like a model that does not
exist: ``404 model_not_found`` with the same body, and it never appears in ``GET /models``.

The registry raises errors that name model ids; everything here answers with the name the
client used.
"""

from __future__ import annotations

from typing import Any

from flask import request

from api.auth import current_client
from api.services import services
from imgq.api_keys import Role
from imgq.errors import Forbidden, ModelNotFound, ReservedModelName, VersionNotFound
from ml.registry import BUILTIN_IMAGENET, ModelVersion, model_id, split_model_id

OWNER_PARAMETER = {
    "in": "query",
    "name": "owner",
    "required": False,
    "schema": {"type": "string"},
    "description": "Admins: the client whose model this is (default: your own, else shared).",
}
"""The ``owner=`` parameter as every model route documents it."""


def _not_found(name: str) -> ModelNotFound:
    return ModelNotFound(f"No model named {name!r}.", {"model": name})


def _is_admin() -> bool:
    return current_client().role is Role.ADMIN


def requested_owner() -> str | None:
    """The ``owner=`` of this request (query string or form field), if any."""
    return request.args.get("owner") or request.form.get("owner") or None


def _owned(name: str, owner: str | None) -> str:
    """The id of ``name`` in the namespace this request may address as its own."""
    caller = current_client()
    if owner is not None and owner != caller.client and caller.role is not Role.ADMIN:
        raise _not_found(name)  # a client naming another owner learns nothing
    return model_id(owner or caller.client, name)


def visible_model(name: str, owner: str | None = None) -> str:
    """The model ``name`` means for the caller: its own, else a shared one; else 404."""
    registry = services().registry
    owner = owner if owner is not None else requested_owner()
    own = _owned(name, owner)
    if registry.exists(own):
        return own
    shared = registry.shared_model(name) if owner is None else None  # owner=: that one only
    if shared is not None:
        return shared
    raise _not_found(name)


def owned_model(name: str) -> str:
    """A model the caller may change (activate, share, delete): its own, or any for admins.

    A shared model of someone else is found but refused (``403``); a model the caller cannot
    see is ``404``.
    """
    found = visible_model(name)
    owner, _ = split_model_id(found)
    if owner != current_client().client and not _is_admin():
        raise Forbidden(f"Only the owner of {name!r} or an admin may change it.")
    return found


def target_model(name: str, owner: str | None = None) -> str:
    """The model a fine-tune trains into: always in the caller's namespace (or ``owner``'s,
    for admins), never a shared model of someone else."""
    if name in reserved_names():
        raise ReservedModelName(f"`{name}` is a built-in model name; choose another.")
    return _owned(name, owner or requested_owner())


def reserved_names() -> set[str]:
    """Names no client may train into: the built-in model and the default model."""
    return {BUILTIN_IMAGENET, services().settings.default_model}


def version_of(model: str, version: int | None = None) -> ModelVersion:
    """A version of a resolved model, with errors that name the model as the client did."""
    try:
        return services().registry.get(model, version)
    except VersionNotFound:
        _, name = split_model_id(model)
        raise VersionNotFound(
            f"Model {name!r} has no version {version}.", {"model": name, "version": version}
        ) from None


def resolve_base(base: str) -> str:
    """``name:version`` as the caller means it, as ``<model id>:<version>``; backbones pass."""
    if ":" not in base:
        return base
    name, _, number = base.partition(":")
    model = visible_model(name)
    version_of(model, int(number))
    return f"{model}:{number}"


def visible_models() -> list[str]:
    """Ids of the models the caller sees: its own and shared ones (admins: every one)."""
    registry = services().registry
    caller = current_client()
    seen = []
    for model in registry.models():
        owner, _ = split_model_id(model)
        if owner is None:
            continue  # a bare model left from before owners existed (migrated at start)
        if caller.role is Role.ADMIN or owner == caller.client or registry.is_shared(model):
            seen.append(model)
    return seen


def _as_client_sees(training: dict[str, Any]) -> dict[str, Any]:
    """Training parameters with ``base`` as the client named it (``pets:1``, not the id)."""
    base = training.get("base")
    if isinstance(base, str) and base.startswith("@"):
        model, _, number = base.partition(":")
        return {**training, "base": f"{split_model_id(model)[1]}:{number}"}
    return training


def describe(model: str, *, with_training: bool) -> dict[str, Any]:
    """The document of ``GET /models/<name>``: versions, which is active, owner, shared."""
    registry = services().registry
    owner, name = split_model_id(model)
    active = registry.active_version(model)
    model_settings = registry.model_settings(model)
    versions = []
    for number in registry.versions(model):
        version = {**registry.get(model, number).to_dict(), "name": name}
        version["dataset"] = version["training"].get("dataset")  # name, version, fingerprint
        if with_training:
            version["training"] = _as_client_sees(version["training"])
        else:
            version.pop("training", None)
        versions.append({**version, "active": number == active})
    return {
        "name": name,
        "owner": owner,
        "shared": registry.is_shared(model),
        "active_version": active,
        "storage_bytes": registry.storage_bytes(model),
        "callback_url": model_settings.get("callback_url"),
        "retain_images": bool(model_settings.get("retain_images", False)),
        "canary": registry.canary(model),
        "policy": model_settings.get("policy"),
        "versions": versions,
    }
