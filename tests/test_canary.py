"""The canary's verdict (``ml.canary``), the canary's place in the registry, and what a
retrain trains on (``ml.retrain``): fast, no services."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from scipy import stats

from imgq.errors import InvalidBase, NothingNew
from ml.canary import compare_canary
from ml.dataset_store import DatasetStore, DatasetVersion
from ml.registry import ModelRegistry, ModelVersion, model_id, publish_version, staging_dir
from ml.retrain import RETRAIN_PARAMETER, retrain_params

NO_DRIFT = {"active": False, "canary": False}
MODEL = model_id("alice", "shop")


def _labelled(correct: int, wrong: int, at: float = 10.0) -> list[tuple[str, str | None, float]]:
    right: list[tuple[str, str | None, float]] = [("a", "a", at)] * correct
    return right + [("a", "b", at)] * wrong


def test_a_clearly_more_accurate_canary_is_better_with_the_agresti_caffo_interval() -> None:
    found = compare_canary(_labelled(60, 40), _labelled(95, 5), since=0, drift=NO_DRIFT)
    assert found["verdict"] == "better"
    assert found["active"] == {"count": 100, "correct": 60, "accuracy": 0.6}
    assert math.isclose(found["difference"], 0.35)
    p_active, p_candidate = 61 / 102, 96 / 102
    spread = math.sqrt(p_active * (1 - p_active) / 102 + p_candidate * (1 - p_candidate) / 102)
    low, high = found["interval"]
    assert math.isclose(low, p_candidate - p_active - 1.959964 * spread, rel_tol=1e-5)
    assert math.isclose(high, p_candidate - p_active + 1.959964 * spread, rel_tol=1e-5)
    table = [[95, 5], [60, 40]]
    assert math.isclose(found["p_value"], stats.chi2_contingency(table, correction=False).pvalue)


def test_one_label_each_way_is_no_verdict_yet() -> None:
    found = compare_canary(_labelled(0, 1), _labelled(1, 0), since=0, drift=NO_DRIFT)
    assert found["verdict"] == "undecided"


def test_a_less_accurate_canary_is_worse_and_a_close_one_undecided() -> None:
    assert (
        compare_canary(_labelled(95, 5), _labelled(60, 40), since=0, drift=NO_DRIFT)["verdict"]
        == "worse"
    )
    assert (
        compare_canary(_labelled(80, 20), _labelled(82, 18), since=0, drift=NO_DRIFT)["verdict"]
        == "undecided"
    )


def test_only_labels_of_predictions_since_the_canary_started_count() -> None:
    before, after = _labelled(0, 50, at=1.0), _labelled(40, 10, at=20.0)
    found = compare_canary(before + after, _labelled(45, 5, at=20.0), since=10.0, drift=NO_DRIFT)
    assert found["active"]["count"] == 50 and found["active"]["correct"] == 40
    unlabelled = [("a", None, 20.0)] * 30
    assert compare_canary(unlabelled, unlabelled, since=0, drift=NO_DRIFT)["verdict"] == "undecided"


def test_without_labels_on_one_side_there_is_no_verdict_and_no_test() -> None:
    found = compare_canary([], _labelled(10, 0), since=0, drift=NO_DRIFT)
    assert (found["verdict"], found["p_value"], found["interval"]) == ("undecided", None, None)
    assert (
        compare_canary(_labelled(10, 0), _labelled(10, 0), since=0, drift=NO_DRIFT)["p_value"]
        == 1.0
    )


def _trained(registry: ModelRegistry, training: dict[str, object]) -> ModelVersion:
    staged = staging_dir(registry, MODEL)
    (staged / "model.keras").write_bytes(b"weights")
    version = publish_version(
        registry,
        MODEL,
        staged,
        lambda number: ModelVersion(
            MODEL, number, "trained", "efficientnet_lite0", 64, ["a", "b"], 0.0, {}, training
        ),
    )
    registry.activate(MODEL, version.version)
    return version


def _dataset(store: DatasetStore, images: dict[str, tuple[str, str]]) -> DatasetVersion:
    return store.commit(
        MODEL,
        lambda latest, number: DatasetVersion(
            MODEL, number, time.time(), latest.version if latest else None, "upload", 0, images
        ),
    )


def test_a_retrain_continues_the_active_version_on_the_latest_dataset_version(
    tmp_path: Path,
) -> None:
    registry, store = ModelRegistry(tmp_path / "m"), DatasetStore(tmp_path / "m")
    first = _dataset(store, {"1" * 64: ("a", "train"), "2" * 64: ("b", "test")})
    record = {"name": "shop", "version": 1, "fingerprint": first.fingerprint}
    _trained(registry, {"params": {"epochs": 4, "seed": 3}, "dataset": record})
    with pytest.raises(NothingNew):
        retrain_params(registry, store, MODEL, {})
    assert retrain_params(registry, store, MODEL, {}, force=True)["dataset_version"] == 1
    _dataset(store, {**first.images, "3" * 64: ("a", "validation")})
    params = retrain_params(registry, store, MODEL, {"epochs": 9})
    assert params["base"] == f"{MODEL}:1" and params["dataset_version"] == 2
    assert (params["epochs"], params["seed"], params["image_size"]) == (9, 3, 64)
    assert params[RETRAIN_PARAMETER] == {"parent_version": 1, "parent_dataset_version": 1}
    added = store.additions(MODEL, 1, 2)
    assert (added["images"], added["per_class"], added["per_source"]) == (
        1,
        {"a": 1},
        {"upload": 1},
    )


def test_the_built_in_model_is_not_retrained(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "m")
    registry.ensure_builtin("efficientnet_lite0", 0.0, MODEL)
    with pytest.raises(InvalidBase):
        retrain_params(registry, DatasetStore(tmp_path / "m"), MODEL, {})


def test_activating_any_version_or_deleting_the_canary_ends_the_canary(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "m")
    _trained(registry, {})
    _trained(registry, {})
    registry.activate(MODEL, 1)
    first = registry.start_canary(MODEL, 2, 0.1, "alice")
    again = registry.start_canary(MODEL, 2, 0.3, "alice")
    assert again["started_at"] == first["started_at"] and again["traffic"] == 0.3
    registry.activate(MODEL, 1)
    assert registry.canary(MODEL) is None
    registry.start_canary(MODEL, 2, 0.1, "alice")
    registry.delete_version(MODEL, 2)
    assert registry.canary(MODEL) is None
