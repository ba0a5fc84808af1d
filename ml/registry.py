"""The model registry: named classifiers with numbered, immutable versions on a shared store.

Layout, one directory per version so a version appears whole or not at all (it is written
under a temporary name and renamed)::

    <store>/<model>/<version>/meta.json     # what it is: backbone, size, labels, metrics
    <store>/<model>/<version>/model.keras   # trained versions only
    <store>/<model>/active                  # the version served when a request names none

No TensorFlow here: the API resolves model names with this module.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imgq.errors import ModelNotFound, VersionNotFound
from ml.backbone_specs import lite_resolution

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
"""Allowed model names: they are directory names on the store."""

ARTIFACTS = ("evaluation.json", "training_curves.png", "confusion_matrix.png")
"""Files of a trained version that clients may download."""

BUILTIN_IMAGENET = "imagenet"
"""Name of the pretrained ImageNet classifier registered at first start."""


@dataclass(frozen=True)
class ModelVersion:
    """One immutable version of a classifier."""

    name: str
    version: int
    kind: str  # "builtin" (built from pretrained weights) or "trained" (model.keras)
    backbone: str
    image_size: int
    labels: list[str] | str  # class names, or "imagenet1k" for the built-in head
    created_at: float
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # parameters, data fingerprint
    artifacts: list[str] = field(default_factory=list)  # downloadable files in the version dir

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in ``meta.json`` and shown by the API."""
        return asdict(self)


def _write_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as handle:
        handle.write(text)
    os.replace(handle.name, path)


class ModelRegistry:
    """Reads and publishes model versions on a directory shared by every process."""

    def __init__(self, store: Path) -> None:
        self.store = store

    def _model_dir(self, name: str) -> Path:
        if not MODEL_NAME.match(name):
            raise ModelNotFound(f"No model named {name!r}.", {"model": name})
        return self.store / name

    def models(self) -> list[str]:
        """Names of every model with at least one version."""
        if not self.store.is_dir():
            return []
        return sorted(p.name for p in self.store.iterdir() if (p / "active").is_file())

    def versions(self, name: str) -> list[int]:
        """Published versions of a model, oldest first."""
        folder = self._model_dir(name)
        if not folder.is_dir():
            raise ModelNotFound(f"No model named {name!r}.", {"model": name})
        return sorted(
            int(p.name)
            for p in folder.iterdir()
            if p.name.isdigit() and (p / "meta.json").is_file()
        )

    def active_version(self, name: str) -> int:
        """The version served when a request names none."""
        pointer = self._model_dir(name) / "active"
        try:
            return int(pointer.read_text().strip())
        except FileNotFoundError:
            raise ModelNotFound(f"No model named {name!r}.", {"model": name}) from None

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """Resolve ``name`` and ``version`` (default: active) to a published version.

        Raises:
            ModelNotFound: no such model.
            VersionNotFound: the model has no such version.
        """
        number = self.active_version(name) if version is None else version
        meta = self.version_dir(name, number) / "meta.json"
        try:
            return ModelVersion(**json.loads(meta.read_text()))
        except FileNotFoundError:
            if not self._model_dir(name).is_dir():
                raise ModelNotFound(f"No model named {name!r}.", {"model": name}) from None
            raise VersionNotFound(
                f"Model {name!r} has no version {number}.", {"model": name, "version": number}
            ) from None

    def version_dir(self, name: str, version: int) -> Path:
        """Directory of one version's files."""
        return self._model_dir(name) / str(version)

    def activate(self, name: str, version: int) -> None:
        """Point ``name``'s active version at ``version`` (which must exist)."""
        self.get(name, version)
        _write_atomically(self._model_dir(name) / "active", f"{version}\n")

    def ensure_builtin(self, backbone: str, created_at: float) -> ModelVersion:
        """Register the pretrained ImageNet classifier as ``imagenet`` v1 if it is not there.

        Idempotent, and safe when several processes start at once.
        """
        folder = self.version_dir(BUILTIN_IMAGENET, 1)
        if not (folder / "meta.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            version = ModelVersion(
                BUILTIN_IMAGENET,
                1,
                "builtin",
                backbone,
                lite_resolution(backbone),
                "imagenet1k",
                created_at,
            )
            _write_atomically(folder / "meta.json", json.dumps(version.to_dict(), indent=2))
        if not (self.store / BUILTIN_IMAGENET / "active").is_file():
            _write_atomically(self.store / BUILTIN_IMAGENET / "active", "1\n")
        return self.get(BUILTIN_IMAGENET, 1)


def publish_version(
    registry: ModelRegistry,
    name: str,
    staged: Path,
    build_meta: Callable[[int], ModelVersion],
) -> ModelVersion:
    """Publish a fully written staging directory as the model's next version, atomically.

    ``staged`` must be a directory on the same filesystem as the store (make it with
    ``staging_dir``) holding ``model.keras`` and any artifacts. The version number is claimed
    by renaming the directory into place, which succeeds for exactly one publisher, so two
    trainers finishing at once get different numbers and readers never see half a version.

    Returns:
        The published version's metadata.
    """
    folder = registry.store / name
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        existing = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
        number = max(existing, default=0) + 1
        version = build_meta(number)
        _write_atomically(staged / "meta.json", json.dumps(version.to_dict(), indent=2))
        try:
            staged.rename(folder / str(number))  # fails if another publisher took the number
        except OSError:
            continue
        return version


def staging_dir(registry: ModelRegistry, name: str) -> Path:
    """A fresh directory beside the model's versions, to write a version into before publishing."""
    folder = registry.store / name
    folder.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
