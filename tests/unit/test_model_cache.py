"""``ModelCache``: hot-swapping to the registry's active version and LRU eviction.

The registry is real (a local store under ``tmp_path``); only the load is faked, so no
TensorFlow is imported: a version's ``model.keras`` holds ``good`` or ``corrupt`` and the fake
loader raises ``ModelLoadFailed`` for the latter, as ``load_classifier`` does for a bad file.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest
from prometheus_client import REGISTRY

from imgq.errors import ModelLoadFailed
from imgq.settings import Settings
from ml.registry import ModelRegistry, ModelVersion, publish_version, staging_dir
from workers.model_cache import ModelCache

if TYPE_CHECKING:
    from ml.classifier import Classifier

GOOD, CORRUPT = b"good", b"corrupt"


@dataclass(frozen=True)
class FakeClassifier:
    """Stands in for a loaded ``Classifier``: it only holds the version it was loaded from."""

    version: ModelVersion


class FakeLoadingCache(ModelCache):
    """A ``ModelCache`` whose load reads the version's file instead of building a Keras model."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.loads: list[tuple[str, int]] = []

    def _load(self, model: str, version: int) -> Classifier:
        self.loads.append((model, version))
        folder = self.registry.local_version_dir(model, version)
        if (folder / "model.keras").read_bytes() != GOOD:
            raise ModelLoadFailed(
                f"Model {model!r} version {version} could not be loaded: corrupt file",
                {"model": model, "version": version},
            )
        return cast("Classifier", FakeClassifier(self.registry.get(model, version)))

    @property
    def loaded(self) -> list[tuple[str, int]]:
        """The ``(model, version)`` pairs held in memory, least recently used first."""
        return list(self._loaded)


def _publish(registry: ModelRegistry, name: str, payload: bytes = GOOD) -> int:
    staged = staging_dir(registry, name)
    (staged / "model.keras").write_bytes(payload)
    published = publish_version(
        registry,
        name,
        staged,
        lambda number: ModelVersion(name, number, "trained", "efficientnet_lite0", 64, ["a"], 0.0),
    )
    return published.version


def _load_failures(model: str) -> float:
    value = REGISTRY.get_sample_value(
        "imgq_worker_model_load_failures_total", {"owner": "", "model": model}
    )
    return value or 0.0


@pytest.fixture
def model() -> str:
    """A model name no other test uses, so the process-wide metrics stay apart."""
    return f"pets-{uuid.uuid4().hex[:8]}"


def _cache(tmp_path: Path, size: int = 3) -> FakeLoadingCache:
    return FakeLoadingCache(
        Settings(
            model_store=tmp_path / "store",
            model_cache_dir=tmp_path / "cache",
            model_cache_size=size,
        )
    )


def test_serving_version_loads_the_active_version_once(tmp_path: Path, model: str) -> None:
    cache = _cache(tmp_path)
    _publish(cache.registry, model)
    cache.registry.activate(model, _publish(cache.registry, model))

    assert cache.serving_version(model) == 2
    assert cache.serving_version(model) == 2
    assert cache.get(model, 2).version == cache.registry.get(model, 2)
    assert cache.loads == [(model, 2)]


def test_refresh_swaps_to_the_newly_activated_version(tmp_path: Path, model: str) -> None:
    cache = _cache(tmp_path)
    cache.registry.activate(model, _publish(cache.registry, model))
    assert cache.serving_version(model) == 1

    cache.registry.activate(model, _publish(cache.registry, model))
    cache.refresh(model)

    assert cache.serving_version(model) == 2
    assert cache.loads == [(model, 1), (model, 2)]


def test_refresh_with_an_unchanged_active_version_loads_nothing(tmp_path: Path, model: str) -> None:
    cache = _cache(tmp_path)
    cache.registry.activate(model, _publish(cache.registry, model))
    cache.serving_version(model)

    cache.refresh(model)

    assert cache.serving_version(model) == 1
    assert cache.loads == [(model, 1)]


def _serve_then_activate_a_corrupt_version(tmp_path: Path, model: str) -> FakeLoadingCache:
    """A cache serving version 1 of ``model``, after version 2 (corrupt) was activated."""
    cache = _cache(tmp_path)
    cache.registry.activate(model, _publish(cache.registry, model))
    cache.serving_version(model)
    cache.registry.activate(model, _publish(cache.registry, model, CORRUPT))
    return cache


def test_a_new_version_that_fails_to_load_leaves_the_old_one_serving_and_is_counted(
    tmp_path: Path, model: str
) -> None:
    failures_before = _load_failures(model)
    cache = _serve_then_activate_a_corrupt_version(tmp_path, model)

    cache.refresh(model)

    assert cache.serving_version(model) == 1
    assert _load_failures(model) == failures_before + 1
    assert cache.loaded == [(model, 1)]
    with pytest.raises(ModelLoadFailed):
        cache.get(model, 2)  # not cached as broken: a pinned job tries again and gets the error


def test_a_fixed_version_is_picked_up_by_the_next_refresh_after_a_failed_one(
    tmp_path: Path, model: str
) -> None:
    cache = _serve_then_activate_a_corrupt_version(tmp_path, model)
    cache.refresh(model)

    cache.registry.activate(model, _publish(cache.registry, model))
    cache.refresh(model)

    assert cache.serving_version(model) == 3


def test_least_recently_used_versions_are_evicted_beyond_the_cache_size(
    tmp_path: Path, model: str
) -> None:
    cache = _cache(tmp_path, size=2)
    for _ in range(3):
        _publish(cache.registry, model)

    cache.get(model, 1)
    cache.get(model, 2)
    cache.get(model, 1)  # now 2 is the least recently used
    cache.get(model, 3)

    assert cache.loaded == [(model, 1), (model, 3)]
    cache.get(model, 2)
    assert cache.loads == [(model, 1), (model, 2), (model, 3), (model, 2)]
    assert len(cache.loaded) == 2


def test_eviction_never_drops_a_serving_version(tmp_path: Path, model: str) -> None:
    cache = _cache(tmp_path, size=2)
    cache.registry.activate(model, _publish(cache.registry, model))
    for _ in range(3):
        _publish(cache.registry, model)
    cache.serving_version(model)  # version 1 serves and is now the least recently used

    cache.get(model, 2)
    cache.get(model, 3)
    cache.get(model, 4)

    assert cache.loaded == [(model, 1), (model, 4)]
    assert cache.serving_version(model) == 1
    assert cache.loads.count((model, 1)) == 1
