"""The model registry: named classifiers with numbered, immutable versions on a shared store.

Layout, one directory per version::

    <store>/<model>/<version>/meta.json     # what it is: backbone, size, labels, metrics
    <store>/<model>/<version>/model.keras   # trained versions only, with plots and the report
    <store>/<model>/active                  # the version served when a request names none
    <store>/_shared/<name>                  # the id of the model every client may use as <name>

where ``<model>`` is a *model id*: a bare name (``pets``), or a name in a namespace
(``@alice/pets``, see ``model_id``). The service keeps each client's models in the client's
namespace, so two clients' ``pets`` are two models; ``migrate_into`` moves bare models written
before namespaces existed into one.

The store is a local path by default and any ``fsspec`` URL otherwise (``s3://bucket/models``,
``gs://…``), so several machines can share it. A version appears whole or not at all: on a
local disk it is written aside and renamed into place (the rename also claims its number);
on an object store its files are uploaded first and ``meta.json`` last, since a version only
exists once its ``meta.json`` does. Versions never change, so processes that need files on disk
(Keras loads ``model.keras`` from a path) download a version once into a local cache.

No TensorFlow here: the API resolves model names with this module.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from ml.backbone_specs import lite_resolution
from ml.errors import ModelNotFound, VersionNotFound
from ml.store_files import StoreFiles, write_atomically

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
"""Allowed model names: they are directory names on the store."""
MODEL_ID = re.compile(r"^(@[A-Za-z0-9%._~-]{1,250}/)?[a-z0-9][a-z0-9_-]{0,62}$")
"""A model name, optionally in a namespace: ``pets`` or ``@alice/pets``."""


def namespace_prefix(namespace: str) -> str:
    """The first part of the ids in ``namespace`` (any text: it is percent-encoded)."""
    return f"@{quote(namespace, safe='')}"


def model_id(namespace: str, name: str) -> str:
    """The id of model ``name`` in ``namespace``."""
    return f"{namespace_prefix(namespace)}/{name}"


def split_model_id(model: str) -> tuple[str | None, str]:
    """``(namespace, name)`` of a model id; the namespace is None for a bare name."""
    if model.startswith("@") and "/" in model:
        namespace, _, name = model[1:].partition("/")
        return unquote(namespace), name
    return None, model


TENSORBOARD_FILE = "tensorboard.zip"
"""A trained version's TensorBoard event files, both training phases (``ml.tensorboard_logs``)."""
ARTIFACTS = (
    "evaluation.json",
    "training_curves.png",
    "confusion_matrix.png",
    "roc.png",
    "reliability.png",
    TENSORBOARD_FILE,
)
"""Files of a trained version that clients may download."""

REFERENCE_FILE = "reference.json"
"""A trained version's predictions on its test split: class frequencies, top-1 confidences."""
CANARY_FILE = "canary"
"""A model's canary, beside its active pointer: the version and its share of traffic."""
SETTINGS_FILE = "settings.json"
"""A model's client-set settings, beside its versions."""

BUILTIN_IMAGENET = "imagenet"
"""Name of the pretrained ImageNet classifier registered at first start."""
BUILTIN_NAMESPACE = "system"
"""Namespace of the built-in classifier (a client may not be called this)."""


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


class ModelRegistry(StoreFiles):
    """Reads and publishes model versions on a store shared by every process.

    Args:
        store: a local path or an ``fsspec`` URL.
        cache_dir: where versions of a remote store are downloaded for local use.
    """

    def __init__(self, store: str | Path, cache_dir: Path | None = None) -> None:
        super().__init__(store)
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "imgq-model-cache"

    def _model_path(self, name: str) -> str:
        if not MODEL_ID.match(name):
            raise ModelNotFound(f"No model named {name!r}.", {"model": name})
        return self._path(name)

    def models(self) -> list[str]:
        """Ids of every model with an active version: bare names, then namespaced ids."""
        found = [n for n in self._children(self.root) if MODEL_NAME.match(n)]
        for namespace in self._children(self.root):
            if namespace.startswith("@"):
                found.extend(
                    f"{namespace}/{n}"
                    for n in self._children(self._path(namespace))
                    if MODEL_NAME.match(n)
                )
        return [model for model in found if self.exists(model)]

    def exists(self, name: str) -> bool:
        """Whether the model has an active version."""
        return MODEL_ID.match(name) is not None and self.fs.exists(self._path(name, "active"))

    def _shared_entry(self, name: str) -> str:
        # ``_shared`` is neither a model name nor a namespace (``@…``), so it never clashes.
        return self._path("_shared", split_model_id(name)[1])

    def is_shared(self, name: str) -> bool:
        """Whether every client may use the model."""
        self._model_path(name)  # ModelNotFound for an id that cannot exist
        return (self._read(self._shared_entry(name)) or "").strip() == name

    def set_shared(self, name: str, shared: bool) -> None:
        """Share the model with every client, or stop sharing it.

        Shared models are indexed by name (``<store>/_shared/<name>`` holds the id), so finding
        the shared model a name means is one read, whatever the number of namespaces; sharing a
        model replaces any other shared model of that name (the API refuses that first).
        """
        self.active_version(name)  # ModelNotFound for an unknown model
        if shared:
            self._write(self._shared_entry(name), f"{name}\n")
        elif self.is_shared(name):
            self.fs.rm_file(self._shared_entry(name))

    def shared_model(self, name: str) -> str | None:
        """The id of the shared model called ``name``, if there is one."""
        text = self._read(self._path("_shared", name)) if MODEL_NAME.match(name) else None
        model = (text or "").strip()
        return model if model and self.exists(model) else None

    def migrate_into(self, namespace: str, *, skip: frozenset[str] = frozenset()) -> list[str]:
        """Move every bare model but those in ``skip`` into ``namespace``; returns the new ids.

        Idempotent; a model whose id is taken in the namespace already is left where it is.

        On a local store each model moves by one rename, so a version is never half moved and
        two processes migrating at once move each model once.
        """
        moved = []
        for name in [n for n in self._children(self.root) if MODEL_NAME.match(n)]:
            target = model_id(namespace, name)
            if name in skip:
                continue
            if self.fs.exists(self._path(target)):
                continue
            if self.is_local:
                Path(self._path(target)).parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.rename(self._path(name), self._path(target))
                except OSError:  # another process moved it first
                    continue
            else:
                self.fs.mv(self._path(name), self._path(target), recursive=True)
            moved.append(target)
        return moved

    def versions(self, name: str) -> list[int]:
        """Published versions of a model, oldest first."""
        folder = self._model_path(name)
        if not self.fs.exists(folder):
            raise ModelNotFound(f"No model named {name!r}.", {"model": name})
        numbers = [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(folder, detail=False)]
        return sorted(
            int(n)
            for n in numbers
            if n.isdigit() and self.fs.exists(self._path(name, n, "meta.json"))
        )

    def active_version(self, name: str) -> int:
        """The version served when a request names none."""
        text = self._read(posixpath.join(self._model_path(name), "active"))
        if text is None:
            raise ModelNotFound(f"No model named {name!r}.", {"model": name})
        return int(text.strip())

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """Resolve ``name`` and ``version`` (default: active) to a published version.

        Raises:
            ModelNotFound: no such model.
            VersionNotFound: the model has no such version.
        """
        number = self.active_version(name) if version is None else version
        text = self._read(posixpath.join(self._model_path(name), str(number), "meta.json"))
        if text is None:
            if not self.fs.exists(self._model_path(name)):
                raise ModelNotFound(f"No model named {name!r}.", {"model": name})
            raise VersionNotFound(
                f"Model {name!r} has no version {number}.", {"model": name, "version": number}
            )
        return ModelVersion(**json.loads(text))

    def read_file(self, name: str, version: int, file_name: str) -> bytes:
        """One file of a version (an artifact), wherever the store is."""
        parts = file_name.split("/")
        if any(not part or part.startswith(".") for part in parts):  # no "..", no hidden files
            raise VersionNotFound(f"No file {file_name!r} in the version.", {"file": file_name})
        return bytes(
            self.fs.cat_file(posixpath.join(self._model_path(name), str(version), file_name))
        )

    def save_export(self, name: str, version: int, export: Path, report: dict[str, Any]) -> None:
        """Store an export file and its report beside the version (the report last)."""
        folder = self._path(name, version, "exports")
        if self.is_local:
            Path(folder).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(export, Path(folder) / f".{export.name}.partial")
            os.replace(Path(folder) / f".{export.name}.partial", Path(folder) / export.name)
        else:
            self.fs.put_file(str(export), posixpath.join(folder, export.name))
        self._write(posixpath.join(folder, f"{report['format']}.json"), json.dumps(report))

    def exports(self, name: str, version: int) -> list[dict[str, Any]]:
        """Reports of the exports made of a version so far."""
        self.get(name, version)
        folder = self._path(name, version, "exports")
        if not self.fs.exists(folder):
            return []
        reports = [
            self._read(path)
            for path in sorted(self.fs.ls(folder, detail=False))
            if path.endswith(".json")
        ]
        return [json.loads(text) for text in reports if text]

    def local_version_dir(self, name: str, version: int) -> Path:
        """A local directory holding the version's files (downloaded once from a remote store)."""
        self.get(name, version)
        if self.is_local:
            return Path(self._path(name, version))
        target = self.cache_dir / name / str(version)
        if not (target / "meta.json").is_file():
            partial = Path(tempfile.mkdtemp(prefix=".download-", dir=_made(self.cache_dir)))
            self.fs.get(self._path(name, version) + "/", str(partial), recursive=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                partial.rename(target)
            except OSError:  # another process downloaded it first
                shutil.rmtree(partial, ignore_errors=True)
        return target

    def delete_version(self, name: str, version: int) -> None:
        """Remove one version with its exports (the caller keeps it from being the active one)."""
        self.get(name, version)
        if (self.canary(name) or {}).get("version") == version:
            self.end_canary(name)
        self._remove(self._path(name, version))
        shutil.rmtree(self.cache_dir / name / str(version), ignore_errors=True)

    def delete_model(self, name: str) -> None:
        """Remove a model: every version, its exports, its active pointer and its sharing."""
        if self.is_shared(name):
            self.fs.rm_file(self._shared_entry(name))
        self._remove(self._model_path(name))
        shutil.rmtree(self.cache_dir / name, ignore_errors=True)

    def storage_bytes(self, name: str) -> int:
        """Bytes the model takes on the store: every version, export and log entry."""
        return self._bytes_under(self._model_path(name))

    def record_event(self, name: str, event: dict[str, Any]) -> None:
        """Add an entry (with a float ``at``) to the model's event log, one file per entry so
        that an object store needs no append."""
        entry = f"{float(event['at']):020.6f}-{uuid.uuid4().hex[:12]}.json"
        self._write(self._path(name, "events", entry), json.dumps(event))

    def events(
        self, name: str, limit: int, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` log entries, newest first, older than ``cursor``; and the cursor of
        the next page (None at the end)."""
        self.active_version(name)  # ModelNotFound for an unknown model
        entries = sorted(
            (e for e in self._children(self._path(name, "events")) if e.endswith(".json")),
            reverse=True,
        )
        if cursor is not None:
            entries = [entry for entry in entries if entry < cursor]
        page = entries[:limit]
        texts = [self._read(self._path(name, "events", entry)) for entry in page]
        return [json.loads(t) for t in texts if t], page[-1] if len(entries) > limit else None

    def reference(
        self, name: str, version: int, builtin_reference: Path | None = None
    ) -> dict[str, Any] | None:
        """What a version predicted on its own test split (``REFERENCE_FILE``), for drift
        tests; for a built-in version, the operator's ``builtin_reference`` file, if any."""
        meta = self.get(name, version)
        if meta.kind == "builtin":
            if builtin_reference is None or not builtin_reference.is_file():
                return None
            found: dict[str, Any] = json.loads(builtin_reference.read_text())
            return found
        text = self._read(self._path(name, version, REFERENCE_FILE))
        return json.loads(text) if text else None

    def model_settings(self, name: str) -> dict[str, Any]:
        """A model's settings that clients change (``callback_url``, ``retain_images``)."""
        text = self._read(posixpath.join(self._model_path(name), SETTINGS_FILE))
        return json.loads(text) if text else {}

    def update_model_settings(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change some of a model's settings (a ``None`` value removes one); returns them all."""
        self.active_version(name)  # ModelNotFound for an unknown model
        merged = {
            k: v for k, v in {**self.model_settings(name), **changes}.items() if v is not None
        }
        self._write(posixpath.join(self._model_path(name), SETTINGS_FILE), json.dumps(merged))
        return merged

    def activate(self, name: str, version: int) -> None:
        """Point ``name``'s active version at ``version`` (which must exist); activating any
        version ends a canary."""
        self.get(name, version)
        self._write(self._path(name, "active"), f"{version}\n")
        self.end_canary(name)

    def canary(self, name: str) -> dict[str, Any] | None:
        """The model's canary: ``{"version", "traffic", "started_at", "by"}``, or None."""
        text = self._read(posixpath.join(self._model_path(name), CANARY_FILE))
        return json.loads(text) if text else None

    def start_canary(self, name: str, version: int, traffic: float, by: str) -> dict[str, Any]:
        """Send ``traffic`` (a fraction) of the model's unpinned jobs to ``version``; a canary
        already running for the same version keeps its start, so its feedback period does."""
        self.get(name, version)
        current = self.canary(name)
        started = current["started_at"] if current and current["version"] == version else None
        canary = {
            "version": version,
            "traffic": traffic,
            "started_at": started or time.time(),
            "by": by,
        }
        self._write(posixpath.join(self._model_path(name), CANARY_FILE), json.dumps(canary))
        return canary

    def end_canary(self, name: str) -> dict[str, Any] | None:
        """Stop the model's canary; returns the one that ran, if any."""
        current = self.canary(name)
        if current is not None:
            self.fs.rm_file(posixpath.join(self._model_path(name), CANARY_FILE))
        return current

    def ensure_builtin(
        self, backbone: str, created_at: float, model: str = BUILTIN_IMAGENET
    ) -> ModelVersion:
        """Register the pretrained ImageNet classifier as ``model`` v1 if it is not there.

        Idempotent, and safe when several processes start at once.
        """
        meta = self._path(model, 1, "meta.json")
        if not self.fs.exists(meta):
            version = ModelVersion(
                BUILTIN_IMAGENET,
                1,
                "builtin",
                backbone,
                lite_resolution(backbone),
                "imagenet1k",
                created_at,
            )
            self._write(meta, json.dumps(version.to_dict(), indent=2))
        if not self.fs.exists(self._path(model, "active")):
            self._write(self._path(model, "active"), "1\n")
        return self.get(model, 1)


BUILTIN_MODEL_ID = model_id(BUILTIN_NAMESPACE, BUILTIN_IMAGENET)
"""Where the built-in classifier lives; it is always shared."""


def prepare_store(
    registry: ModelRegistry, *, legacy_namespace: str, backbone: str, created_at: float
) -> str:
    """Get a store ready to serve: models written before namespaces move into
    ``legacy_namespace`` (all but the old built-in, which is replaced), and the built-in
    classifier is registered and shared if it was not yet. Returns the built-in's id.

    Every process that serves models calls this at start; it is idempotent.
    """
    registry.migrate_into(legacy_namespace, skip=frozenset({BUILTIN_IMAGENET}))
    registry.ensure_builtin(backbone, created_at, BUILTIN_MODEL_ID)
    if not registry.is_shared(BUILTIN_MODEL_ID):
        registry.set_shared(BUILTIN_MODEL_ID, True)
    return BUILTIN_MODEL_ID


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def staging_dir(registry: ModelRegistry, name: str) -> Path:
    """A fresh local directory to write a version into before publishing it.

    On a local store it sits beside the versions (same filesystem, so publishing is a rename).
    """
    if registry.is_local:
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=_made(Path(registry._path(name)))))
    return Path(tempfile.mkdtemp(prefix="staging-", dir=_made(registry.cache_dir)))


def _next_number(registry: ModelRegistry, name: str) -> int:
    folder = registry._path(name)
    if not registry.fs.exists(folder):
        return 1
    names = [posixpath.basename(p.rstrip("/")) for p in registry.fs.ls(folder, detail=False)]
    return max((int(n) for n in names if n.isdigit()), default=0) + 1


def publish_version(
    registry: ModelRegistry,
    name: str,
    staged: Path,
    build_meta: Callable[[int], ModelVersion],
) -> ModelVersion:
    """Publish a fully written staging directory as the model's next version.

    ``staged`` comes from ``staging_dir`` and holds ``model.keras`` and the artifacts. On a
    local store the version number is claimed by renaming the directory into place, which
    succeeds for exactly one publisher. On an object store the files are uploaded and
    ``meta.json`` written last; two trainers finishing the same model at the same instant
    could pick the same number there, which the store cannot arbitrate.

    Returns:
        The published version's metadata.
    """
    while True:
        number = _next_number(registry, name)
        version = build_meta(number)
        meta = json.dumps(version.to_dict(), indent=2)
        if not registry.is_local:
            target = registry._path(name, number)
            for path in sorted(staged.iterdir()):
                registry.fs.put_file(str(path), posixpath.join(target, path.name))
            registry.fs.pipe_file(posixpath.join(target, "meta.json"), meta.encode())
            shutil.rmtree(staged, ignore_errors=True)
            return version
        write_atomically(staged / "meta.json", meta)
        try:
            staged.rename(Path(registry._path(name, number)))  # fails if the number is taken
        except OSError:
            continue
        return version
