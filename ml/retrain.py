"""A retrain: the fine-tune that continues a model from its active version on its grown dataset.

The API's ``POST /models/<name>/retrain`` and the rollout policy (``workers.rollout``) build the
same job parameters here: the latest version of the dataset the active version was trained on
(the model's own dataset when it was trained before datasets existed), ``base`` the active
version, its training parameters unless overridden. A retrain is never activated by the gate:
only a person or a canary verdict promotes it (``ml.finetune``).
"""

from __future__ import annotations

from typing import Any

from ml.dataset_store import DatasetStore
from ml.errors import InvalidBase, NothingNew
from ml.registry import ModelRegistry, model_id, split_model_id

RETRAIN_PARAMETER = "retrain"
"""The job parameter that marks a fine-tune as a retrain: ``{"parent_version", ...}``."""


def retrain_params(
    registry: ModelRegistry,
    datasets: DatasetStore,
    model: str,
    overrides: dict[str, Any],
    *,
    force: bool = False,
) -> dict[str, Any]:
    """The fine-tune job parameters of a retrain of ``model``.

    Raises:
        ModelNotFound: no such model.
        InvalidBase: the active version is built in (nothing of the client's to continue).
        DatasetNotFound: the model has no dataset.
        NothingNew: the dataset has not changed since the active version was trained
            (unless ``force``).
    """
    active = registry.get(model)
    owner, name = split_model_id(model)
    if active.kind != "trained":
        raise InvalidBase(
            f"The active version of {name!r} is built in; fine-tune a model of your own first.",
            {"model": name, "version": active.version},
        )
    trained_on = active.training.get("dataset") or {}
    dataset = model_id(str(owner), trained_on.get("name", name))
    latest = datasets.get(dataset)  # DatasetNotFound when there is none
    if not force and latest.fingerprint == trained_on.get("fingerprint"):
        raise NothingNew(
            f"Dataset {split_model_id(dataset)[1]!r} has not changed since version "
            f"{active.version} was trained on its version {trained_on.get('version')}; send "
            '`"force": true` to retrain anyway.',
            {"model": name, "dataset_version": latest.version},
        )
    return {
        **_parameters_to_repeat(active.training),
        **overrides,
        "model": model,
        "base": f"{model}:{active.version}",
        "image_size": active.image_size,
        "dataset": dataset,
        "dataset_version": latest.version,
        RETRAIN_PARAMETER: {
            "parent_version": active.version,
            "parent_dataset_version": trained_on.get("version"),
        },
    }


def _parameters_to_repeat(training: dict[str, Any]) -> dict[str, Any]:
    """The parent's training parameters, with those the data chose left to choose again.

    A retrain trains on a grown dataset: what ``auto`` chose for the parent (frozen backbone
    for a small set, say) may not suit it, so those parameters are ``auto`` again.
    """
    chosen = (training.get("auto") or {}).get("chosen", {})
    return {
        name: "auto" if name in chosen else value
        for name, value in training.get("params", {}).items()
    }
