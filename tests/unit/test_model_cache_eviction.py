"""A prediction worker keeps at most ``IMGQ_MODEL_CACHE_SIZE`` versions loaded, served ones
included, so requests pinned to many versions cannot grow its memory without bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from imgq.settings import Settings
from workers.model_cache import ModelCache


def _cache(tmp_path: Path, size: int) -> ModelCache:
    return ModelCache(Settings(model_store=tmp_path / "models", model_cache_size=size))


def _load(cache: ModelCache, *keys: tuple[str, int]) -> None:
    for key in keys:
        cache._loaded[key] = cast("Any", object())  # a stand-in: eviction never touches it
        cache._evict()


def test_versions_nothing_routes_to_go_before_served_ones(tmp_path: Path) -> None:
    cache = _cache(tmp_path, 2)
    cache._serving = {"a": 1}
    _load(cache, ("a", 1), ("b", 7), ("c", 3))
    assert list(cache._loaded) == [("a", 1), ("c", 3)]
    assert cache._serving == {"a": 1}


def test_served_versions_are_evicted_too_least_recently_used_first(tmp_path: Path) -> None:
    cache = _cache(tmp_path, 2)
    cache._serving = {"a": 1, "b": 1, "c": 1}
    _load(cache, ("a", 1), ("b", 1), ("c", 1))
    assert list(cache._loaded) == [("b", 1), ("c", 1)]
    assert cache._serving == {"b": 1, "c": 1}  # "a" loads again on its next job
