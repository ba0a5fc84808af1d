"""The model registry on a local path and on an fsspec store (``memory://`` standing in for S3)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from imgq.errors import ModelNotFound, VersionNotFound
from ml.registry import (
    ModelRegistry,
    ModelVersion,
    model_id,
    prepare_store,
    publish_version,
    split_model_id,
    staging_dir,
)


@pytest.fixture(params=["local", "fsspec"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> ModelRegistry:
    if request.param == "local":
        return ModelRegistry(tmp_path / "store", tmp_path / "cache")
    return ModelRegistry(f"memory://imgq-{uuid.uuid4().hex}/models", tmp_path / "cache")


def _publish(registry: ModelRegistry, name: str, payload: bytes) -> ModelVersion:
    staged = staging_dir(registry, name)
    (staged / "model.keras").write_bytes(payload)
    (staged / "evaluation.json").write_text(json.dumps({"accuracy": 0.9}))
    return publish_version(
        registry,
        name,
        staged,
        lambda number: ModelVersion(
            name,
            number,
            "trained",
            "efficientnet_lite0",
            64,
            ["a", "b"],
            0.0,
            {"accuracy": 0.9},
            {},
            ["evaluation.json"],
        ),
    )


def test_versions_are_numbered_published_and_activated(registry: ModelRegistry) -> None:
    assert registry.models() == []
    first, second = _publish(registry, "pets", b"one"), _publish(registry, "pets", b"two")
    assert (first.version, second.version) == (1, 2)
    assert registry.versions("pets") == [1, 2]
    assert registry.models() == []  # nothing is active yet
    registry.activate("pets", 2)
    assert registry.models() == ["pets"]
    assert registry.active_version("pets") == 2
    assert registry.get("pets").labels == ["a", "b"]
    assert json.loads(registry.read_file("pets", 1, "evaluation.json")) == {"accuracy": 0.9}


def test_local_copies_of_versions_hold_their_files(registry: ModelRegistry) -> None:
    _publish(registry, "pets", b"weights")
    folder = registry.local_version_dir("pets", 1)
    assert (folder / "model.keras").read_bytes() == b"weights"
    assert json.loads((folder / "meta.json").read_text())["version"] == 1
    assert registry.local_version_dir("pets", 1) == folder  # downloaded once, then reused


def test_unknown_names_and_versions_are_clear_errors(registry: ModelRegistry) -> None:
    _publish(registry, "pets", b"x")
    with pytest.raises(ModelNotFound):
        registry.get("cats")
    with pytest.raises(ModelNotFound):
        registry.get("../etc")
    with pytest.raises(VersionNotFound):
        registry.get("pets", 7)
    with pytest.raises(VersionNotFound):
        registry.activate("pets", 7)


def test_builtin_registration_is_idempotent(registry: ModelRegistry) -> None:
    first = registry.ensure_builtin("efficientnet_lite0", 1.0)
    again = registry.ensure_builtin("efficientnet_lite0", 2.0)
    assert first == again
    assert (first.image_size, first.labels) == (224, "imagenet1k")
    assert registry.models() == ["imagenet"]


def test_staging_leftovers_are_not_versions(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "store")
    _publish(registry, "pets", b"x")
    staging_dir(registry, "pets")  # a trainer that died before publishing
    assert registry.versions("pets") == [1]
    assert _publish(registry, "pets", b"y").version == 2


def test_models_written_before_owners_move_to_the_legacy_owner_with_every_version(
    registry: ModelRegistry,
) -> None:
    registry.ensure_builtin("efficientnet_lite0", 0.0)  # the old bare built-in
    first, second = _publish(registry, "pets", b"one"), _publish(registry, "pets", b"two")
    registry.activate("pets", first.version)

    for _ in range(2):  # idempotent: a second start moves nothing
        builtin = prepare_store(
            registry, legacy_namespace="local-admin", backbone="efficientnet_lite0", created_at=0
        )

    moved = model_id("local-admin", "pets")
    # the old bare built-in stays (harmless, never listed by the API); the new one is shared
    assert set(registry.models()) == {"imagenet", builtin, moved}
    assert registry.versions(moved) == [first.version, second.version]
    assert registry.active_version(moved) == first.version  # the active version is kept
    assert registry.read_file(moved, second.version, "model.keras") == b"two"
    assert not registry.exists("pets") and not registry.is_shared(moved)
    assert registry.is_shared(builtin) and registry.shared_model("imagenet") == builtin
    assert split_model_id(moved) == ("local-admin", "pets")


def test_namespaces_keep_two_clients_models_of_one_name_apart(registry: ModelRegistry) -> None:
    alices, bobs = model_id("alice", "pets"), model_id("bob", "pets")
    registry.activate(alices, _publish(registry, alices, b"alice").version)
    registry.activate(bobs, _publish(registry, bobs, b"bob").version)
    assert registry.read_file(alices, 1, "model.keras") == b"alice"
    assert registry.read_file(bobs, 1, "model.keras") == b"bob"
    assert registry.storage_bytes(alices) >= len(b"alice")
    assert registry.shared_model("pets") is None
    registry.set_shared(bobs, True)
    assert registry.shared_model("pets") == bobs
    registry.set_shared(bobs, False)
    assert registry.shared_model("pets") is None


def test_a_deleted_version_or_model_is_gone_whole(registry: ModelRegistry) -> None:
    pets = model_id("alice", "pets")
    first, second = _publish(registry, pets, b"one"), _publish(registry, pets, b"two")
    registry.activate(pets, first.version)
    registry.delete_version(pets, second.version)
    assert registry.versions(pets) == [first.version]
    with pytest.raises(VersionNotFound):
        registry.get(pets, second.version)
    registry.delete_model(pets)
    assert not registry.exists(pets) and pets not in registry.models()
    with pytest.raises(ModelNotFound):
        registry.versions(pets)


def test_a_version_file_name_cannot_leave_the_version(registry: ModelRegistry) -> None:
    _publish(registry, "pets", b"weights")
    assert json.loads(registry.read_file("pets", 1, "evaluation.json")) == {"accuracy": 0.9}
    for name in ("../active", "exports/../../active", ".hidden", "/etc/passwd", ""):
        with pytest.raises(VersionNotFound):
            registry.read_file("pets", 1, name)
