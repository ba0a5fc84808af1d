"""A renderer for the subset of Kustomize that ``deploy/`` uses, so the deploy tests run offline.

``render(directory)`` builds a kustomization as ``kustomize build`` does: resources (files and
kustomization directories, built first), ConfigMap and Secret generators (env files, files and
literals) with kustomize's content-hash name suffix unless disabled, strategic-merge and JSON
6902 patches, namespace, labels and images.
Anything outside that subset raises ``KustomizeError`` rather than rendering something
kustomize would render differently; and unlike kustomize, a patch that matches no resource is
an error. ``tests/test_deploy.py`` checks the output against ``kubectl kustomize`` where kubectl
is installed.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.manifests import (
    POD_TEMPLATE_KINDS,
    Manifest,
    containers,
    pod_specs,
    split_image,
)


class KustomizeError(Exception):
    """A kustomization is wrong, or uses something outside the subset rendered here."""


KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "images",
    "patches",
    "configMapGenerator",
    "secretGenerator",
}
"""Kustomization fields the renderer understands; any other is a ``KustomizeError``."""
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
}
"""Kinds that have no namespace, so ``namespace:`` leaves them alone."""
BUILTIN_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "Secret",
    "Service",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
}
"""Kubernetes kinds a strategic merge patch may target (custom resources take JSON 6902)."""
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
}
"""Strategic-merge keys of the Kubernetes lists patched here (their ``patchMergeKey``)."""
REPLACED_LISTS = {"tolerations", "envFrom"}
"""Lists of objects that a strategic merge patch replaces whole (no merge key in Kubernetes)."""


@dataclass
class Build:
    """Resources of one kustomization, and which of them generators made (named before hashing)."""

    resources: list[Manifest]
    generated: set[tuple[str, str]] = field(default_factory=set)
    unhashed: set[tuple[str, str]] = field(default_factory=set)
    """Generated objects that keep their name (``options: {disableNameSuffixHash: true}``)."""


def render(directory: Path) -> list[Manifest]:
    """Render a kustomization directory as ``kustomize build`` does, for the supported subset.

    Supported: ``resources`` (files and directories), ``configMapGenerator`` and
    ``secretGenerator`` (``envs``, ``files``, ``literals``, ``behavior``; ``options`` with
    ``disableNameSuffixHash`` only) with their content-hash name suffix, ``patches`` (strategic
    merge for built-in kinds, JSON 6902 with a target), ``namespace``, ``labels``
    (``includeTemplates``) and ``images``. Unlike kustomize, a patch that matches no resource is
    an error.

    Args:
        directory: a folder holding ``kustomization.yaml``.

    Returns:
        The objects in kustomize's order, generated names hashed and references renamed.

    Raises:
        KustomizeError: the kustomization is wrong or uses something outside the subset.
    """
    build = _build(directory)
    renames = {}
    for manifest in build.resources:
        key = (manifest["kind"], manifest["metadata"]["name"])
        if key in build.generated and key not in build.unhashed:
            renames[key] = f"{key[1]}-{kustomize_hash(manifest)}"
            manifest["metadata"]["name"] = renames[key]
    for manifest in build.resources:
        for pod_spec in pod_specs(manifest):
            _rename_references(pod_spec, renames)
    return build.resources


def _build(directory: Path) -> Build:
    """Build one kustomization in kustomize's order, generated names not yet hashed."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - KUSTOMIZATION_KEYS
    if unsupported:
        raise KustomizeError(f"{directory}: unsupported kustomization fields {sorted(unsupported)}")
    build = Build(resources=[])
    for entry in kustomization.get("resources", []):
        _load(directory / entry, build)
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for spec in kustomization.get(key, []):
            _generate(directory, kind, spec, build)
    for patch in kustomization.get("patches", []):
        _apply_patch(directory, patch, build.resources)
    if "namespace" in kustomization:
        for manifest in build.resources:
            if manifest["kind"] not in CLUSTER_SCOPED:
                manifest["metadata"]["namespace"] = kustomization["namespace"]
    for entry in kustomization.get("labels", []):
        _add_labels(entry, build.resources)
    for image in kustomization.get("images", []):
        _set_image(image, build.resources)
    ids = [
        (m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]) for m in build.resources
    ]
    duplicates = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if duplicates:
        raise KustomizeError(f"{directory}: duplicate resources {duplicates}")
    return build


def _load(path: Path, build: Build) -> None:
    """Add a resources entry: a kustomization directory, built first, or a YAML file."""
    if path.is_dir():
        sub = _build(path.resolve())
        build.resources += sub.resources
        build.generated |= sub.generated
        build.unhashed |= sub.unhashed
    else:
        build.resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _read_env_file(path: Path) -> list[tuple[str, str]]:
    """KEY=VALUE lines as kustomize reads them: leading blanks and # comments skipped."""
    pairs = []
    for line in path.read_text().splitlines():
        line = line.lstrip()  # noqa: PLW2901
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise KustomizeError(f"{path}: {key!r} has no value (kustomize would read the OS env)")
        pairs.append((key, value))
    return pairs


def kustomize_base64(value: str) -> str:
    """Base64 as kustomize writes Secret data: lines of 70, each ending in a newline if several."""
    encoded = base64.b64encode(value.encode()).decode()
    if len(encoded) < 70:
        return encoded
    return "".join(encoded[i : i + 70] + "\n" for i in range(0, len(encoded), 70))


def _generate(directory: Path, kind: str, spec: Manifest, build: Build) -> None:
    """Run one ``configMapGenerator`` or ``secretGenerator`` entry: create, merge or replace."""
    allowed = {"name", "envs", "files", "literals", "behavior", "options"}
    allowed |= {"type"} if kind == "Secret" else set()
    if set(spec) - allowed:
        raise KustomizeError(f"{spec.get('name')}: unsupported fields {set(spec) - allowed}")
    options = spec.get("options", {})
    if set(options) - {"disableNameSuffixHash"}:
        raise KustomizeError(f"{spec['name']}: unsupported options {sorted(options)}")
    pairs = [pair for env in spec.get("envs", []) for pair in _read_env_file(directory / env)]
    for entry in spec.get("files", []):  # "path" (the key is its file name) or "key=path"
        key, sep, path = entry.partition("=")
        if not sep:
            key, path = Path(entry).name, entry
        pairs.append((key, (directory / path).read_bytes().decode()))  # as is, no newline changes
    for literal in spec.get("literals", []):
        key, sep, value = literal.partition("=")
        if not sep or value[:1] in {"'", '"'}:
            raise KustomizeError(f"unsupported literal {literal!r}")
        pairs.append((key, value))
    if len({key for key, _ in pairs}) != len(pairs):
        raise KustomizeError(f"{spec['name']}: a key is given twice")
    data = {key: value if kind == "ConfigMap" else kustomize_base64(value) for key, value in pairs}
    name, behavior = spec["name"], spec.get("behavior", "create")
    existing = [m for m in build.resources if (m["kind"], m["metadata"]["name"]) == (kind, name)]
    if behavior == "create" and not existing:
        manifest: Manifest = {
            "apiVersion": "v1",
            "kind": kind,
            "metadata": {"name": name},
            "data": data,
        }
        if kind == "Secret":
            manifest["type"] = spec.get("type", "Opaque")
        build.resources.append(manifest)
        build.generated.add((kind, name))
        if options.get("disableNameSuffixHash"):
            build.unhashed.add((kind, name))
    elif behavior in {"merge", "replace"} and existing and (kind, name) in build.generated:
        existing[0]["data"] = {**existing[0]["data"], **data} if behavior == "merge" else data
    else:
        raise KustomizeError(f"{kind} {name}: behavior {behavior!r} does not fit what exists")


def kustomize_hash(manifest: Manifest) -> str:
    """The name suffix kustomize gives a generated ConfigMap or Secret.

    kustomize hashes the JSON of kind, data (and type) with an *empty* name: it looks the name
    up under the literal key ``metadata/name``, finds nothing and uses "". Mirrored here so the
    names agree with kustomize's.
    """
    fields: Manifest = {"kind": manifest["kind"], "name": "", "data": manifest.get("data", "")}
    if manifest["kind"] == "Secret":
        fields["type"] = manifest.get("type", "")
    # Go's json.Marshal: sorted keys, no spaces, <, > and & escaped.
    encoded = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _identity(manifest: Manifest) -> dict[str, str | None]:
    """An object's group, version, kind, name and namespace: the fields a patch target names."""
    group, _, version = manifest["apiVersion"].rpartition("/")
    return {
        "group": group,
        "version": version,
        "kind": manifest["kind"],
        "name": manifest["metadata"]["name"],
        "namespace": manifest["metadata"].get("namespace"),
    }


def _matches(manifest: Manifest, target: Manifest) -> bool:
    """Whether a patch ``target`` (any of the fields of ``_identity``) selects an object."""
    unsupported = set(target) - {"group", "version", "kind", "name", "namespace"}
    if unsupported:
        raise KustomizeError(f"unsupported patch target fields {sorted(unsupported)}")
    actual = _identity(manifest)
    return all(actual[key] == value for key, value in target.items())


def _apply_patch(directory: Path, patch: Manifest, resources: list[Manifest]) -> None:
    """Apply one ``patches`` entry (from a file or inline) to every resource it targets."""
    if set(patch) - {"path", "patch", "target"}:
        raise KustomizeError(f"unsupported patch fields {sorted(set(patch))}")
    text = (directory / patch["path"]).read_text() if "path" in patch else patch["patch"]
    body = yaml.safe_load(text)
    target = patch.get("target")
    if isinstance(body, list) and target is None:
        raise KustomizeError("a JSON 6902 patch needs a target")
    if target is None:  # a strategic merge patch targets the object it names, in any namespace
        target = {key: value for key, value in _identity(body).items() if key != "namespace"}
    indexes = [i for i, manifest in enumerate(resources) if _matches(manifest, target)]
    if not indexes:
        raise KustomizeError(f"patch {patch.get('path', '(inline)')} matches no resource: {target}")
    for i in indexes:
        if isinstance(body, list):
            apply_json6902(resources[i], body)
        elif resources[i]["kind"] in BUILTIN_KINDS:
            resources[i] = strategic_merge(resources[i], body)
        else:
            raise KustomizeError(f"strategic merge into {resources[i]['kind']} is not supported")


def strategic_merge(target: Any, patch: Any, field_name: str = "") -> Any:
    """Kubernetes strategic merge, for maps and the lists in MERGE_KEYS and REPLACED_LISTS.

    Like kustomize, a merged list holds the patch's items first (merged into the existing item
    with the same key), then the existing items the patch does not name. ``null`` deletes.
    """
    if isinstance(patch, dict):
        if any(key.startswith("$") for key in patch):
            raise KustomizeError(f"patch directives are not supported: {sorted(patch)}")
        merged = dict(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = strategic_merge(merged.get(key), value, key)
        return merged
    if isinstance(patch, list) and any(isinstance(item, dict) for item in patch):
        if field_name in REPLACED_LISTS:
            return copy.deepcopy(patch)
        if field_name not in MERGE_KEYS:
            raise KustomizeError(f"no strategic-merge rule for the list {field_name!r}")
        key = MERGE_KEYS[field_name]
        if not all(key in item for item in [*patch, *(target or [])]):
            raise KustomizeError(f"items of {field_name!r} without their merge key {key!r}")
        existing = {item[key]: item for item in target or []}
        named = {item[key] for item in patch}
        return [strategic_merge(existing.get(item[key]), item) for item in patch] + [
            copy.deepcopy(item) for item in target or [] if item[key] not in named
        ]
    return copy.deepcopy(patch)


def apply_json6902(manifest: Manifest, operations: list[Manifest]) -> None:
    """Apply JSON patch operations (add, remove, replace, test) in place."""
    for operation in operations:
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in operation["path"].split("/")[1:]]
        parent: Any = manifest
        for token in tokens[:-1]:
            parent = parent[int(token)] if isinstance(parent, list) else parent[token]
        last: Any = tokens[-1]
        if isinstance(parent, list):
            last = len(parent) if last == "-" else int(last)
        elif operation["op"] in {"remove", "replace", "test"} and last not in parent:
            raise KustomizeError(f"{operation['op']} {operation['path']}: no such field")
        if operation["op"] == "add" and isinstance(parent, list):
            parent.insert(last, operation["value"])
        elif operation["op"] in {"add", "replace"}:
            parent[last] = operation["value"]
        elif operation["op"] == "remove":
            del parent[last]
        elif operation["op"] != "test" or parent[last] != operation["value"]:
            raise KustomizeError(f"JSON patch operation failed or unsupported: {operation}")


def _add_labels(entry: Manifest, resources: list[Manifest]) -> None:
    """Add one ``labels`` entry's pairs to every object, and to pod templates if asked."""
    supported = {"pairs", "includeTemplates", "includeSelectors"}
    if set(entry) - supported or entry.get("includeSelectors"):
        raise KustomizeError(f"unsupported labels entry {entry}")
    for manifest in resources:
        manifest["metadata"].setdefault("labels", {}).update(entry["pairs"])
        if entry.get("includeTemplates") and manifest["kind"] in POD_TEMPLATE_KINDS:
            template = manifest["spec"]["template"].setdefault("metadata", {})
            template.setdefault("labels", {}).update(entry["pairs"])
            for claim in manifest["spec"].get("volumeClaimTemplates", []):
                claim["metadata"].setdefault("labels", {}).update(entry["pairs"])


def _set_image(spec: Manifest, resources: list[Manifest]) -> None:
    """Apply one ``images`` entry: a new name, tag or digest for the containers that use it."""
    if set(spec) - {"name", "newName", "newTag", "digest"}:
        raise KustomizeError(f"unsupported images entry {spec}")
    for manifest in resources:
        for container in containers(manifest):
            name, tag, digest = split_image(container["image"])
            if name != spec["name"]:
                continue
            image = spec.get("newName", name)
            if "digest" in spec:
                image += "@" + spec["digest"]
            elif "newTag" in spec:
                image += ":" + str(spec["newTag"])
            else:
                image += (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
            container["image"] = image


def _rename_references(pod_spec: Manifest, renames: dict[tuple[str, str], str]) -> None:
    """Point a pod's ConfigMap and Secret references at the hashed names, as kustomize does."""

    def rename(ref: Manifest | None, kind: str, key: str = "name") -> None:
        if ref is not None and (kind, ref.get(key)) in renames:
            ref[key] = renames[(kind, ref[key])]

    for container in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        for source in container.get("envFrom", []):
            rename(source.get("configMapRef"), "ConfigMap")
            rename(source.get("secretRef"), "Secret")
        for variable in container.get("env", []):
            rename(variable.get("valueFrom", {}).get("configMapKeyRef"), "ConfigMap")
            rename(variable.get("valueFrom", {}).get("secretKeyRef"), "Secret")
    for volume in pod_spec.get("volumes", []):
        rename(volume.get("configMap"), "ConfigMap")
        rename(volume.get("secret"), "Secret", "secretName")
    for secret in pod_spec.get("imagePullSecrets", []):
        rename(secret, "Secret")
