"""The model registry on a local path and on an fsspec store (``memory://`` standing in for S3)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from imgq.errors import ModelNotFound, VersionNotFound
from ml.registry import ModelRegistry, ModelVersion, publish_version, staging_dir


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
