"""Kubernetes objects as dicts, and the queries the deploy tests ask of them.

The objects are what ``yaml.safe_load`` gives (``Manifest``); the queries read workloads, pod
templates, containers and label selectors the way the API server does, and fail the calling
test when an object they look for is missing.
"""

from __future__ import annotations

import re
from typing import Any

Manifest = dict[str, Any]
"""One Kubernetes object, as parsed from YAML."""

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
"""Kinds whose ``spec.template`` is a pod template."""


def pod_specs(manifest: Manifest) -> list[Manifest]:
    """The pod spec of a workload's template: one for a workload, none for other kinds."""
    if manifest["kind"] in POD_TEMPLATE_KINDS:
        return [manifest["spec"]["template"]["spec"]]
    return []


def containers(manifest: Manifest) -> list[Manifest]:
    """Every container and init container of a workload."""
    return [
        container
        for pod_spec in pod_specs(manifest)
        for container in pod_spec.get("initContainers", []) + pod_spec["containers"]
    ]


def main_containers(manifest: Manifest) -> list[Manifest]:
    """A workload's containers without its init containers."""
    return [container for pod_spec in pod_specs(manifest) for container in pod_spec["containers"]]


def init_containers(manifest: Manifest) -> list[Manifest]:
    """A workload's init containers."""
    return [c for pod_spec in pod_specs(manifest) for c in pod_spec.get("initContainers", [])]


def volumes(manifest: Manifest) -> dict[str, Manifest]:
    """A workload's pod volumes by name."""
    return {v["name"]: v for pod_spec in pod_specs(manifest) for v in pod_spec.get("volumes", [])}


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` into its parts (a registry port is part of the name)."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    if ":" in name[slash + 1 :]:
        name, _, tag = name.rpartition(":")
        return name, tag, digest or None
    return name, None, digest or None


def one(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    """The object of that kind and name, or fail."""
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def generated(manifests: list[Manifest], kind: str, base_name: str) -> Manifest:
    """The generated ConfigMap or Secret whose name is base_name plus a hash suffix."""
    found = [
        m
        for m in manifests
        if m["kind"] == kind and re.fullmatch(rf"{base_name}-[a-z0-9]{{10}}", m["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one generated {kind} {base_name}-<hash>"
    return found[0]


def workloads(manifests: list[Manifest]) -> list[Manifest]:
    """Deployments and StatefulSets."""
    return [m for m in manifests if m["kind"] in POD_TEMPLATE_KINDS]


def template_labels(workload: Manifest) -> dict[str, str]:
    """Labels of a workload's pods."""
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: Manifest, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels and In/NotIn/Exists expressions) matches labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        if operator == "In" and labels.get(key) not in expression["values"]:
            return False
        if operator == "NotIn" and labels.get(key) in expression["values"]:
            return False
        if operator in {"Exists", "DoesNotExist"} and (key in labels) != (operator == "Exists"):
            return False
    return True


def role(workload: Manifest) -> str:
    """The image role a workload's main container runs (its first argument)."""
    role_name: str = workload["spec"]["template"]["spec"]["containers"][0]["args"][0]
    return role_name


def env_names(container: Manifest) -> set[str]:
    """Names of the variables a container sets one by one."""
    return {variable["name"] for variable in container.get("env", [])}


def env_var(container: Manifest, name: str) -> Manifest:
    """The container's ``env`` entry of that name, or fail."""
    found: list[Manifest] = [v for v in container.get("env", []) if v["name"] == name]
    assert len(found) == 1, f"{container['name']}: expected one variable {name}"
    return found[0]


def probe_command(probe: Manifest) -> str:
    """An exec probe's command as one string."""
    return " ".join(probe["exec"]["command"])
