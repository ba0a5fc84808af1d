"""``deploy/overlays/podman`` (the ``cpu`` overlay for one machine) run by ``podman kube play``.

The overlay is rendered offline (``tests.support.kustomize``, checked against ``kubectl
kustomize`` by ``tests/test_deploy.py``), then ``for_podman`` adapts what podman 4.3's kube
play cannot take as it is, without changing what the pods run:

* Secrets: kube play stores a ``Secret`` object in a form its own ``secretKeyRef`` lookup then
  fails to parse, and a ``secret`` volume crashes it (a nil dereference). So each
  ``secretKeyRef`` becomes the value it names, and each secret volume a host directory holding
  the Secret's files; the API-key Secrets get this run's keys file, as ``imgq-admin keys create
  --kubernetes | kubectl apply -f -`` would give them.
* The Redis StatefulSet (kube play plays Pods and Deployments only) becomes a one-pod
  Deployment of the same template, its volume claim template a PersistentVolumeClaim.
* kube play makes an ``emptyDir`` a named volume of the volume's name, shared by every pod
  that names one alike (every pod's ``tmp``: the role file of the image's healthcheck, the ready
  file), so each pod's get its own name, ``<workload>-<volume>``.
* Pods restart ``OnFailure`` rather than ``Always``: kube play gives init containers the pod's
  policy, so with ``Always`` an init container that finished is started again and kube play
  fails to remove it. A SIGKILLed container (exit 137) is restarted all the same.
* Only the kinds kube play acts on are passed (Deployment, PersistentVolumeClaim, ConfigMap):
  Services, HPAs, PDBs, NetworkPolicies and KEDA's objects it would ignore anyway.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import yaml

from tests.containers.podman import REPO, Podman
from tests.containers.smoke import Stack
from tests.support.http import Credentials
from tests.support.kustomize import render
from tests.support.manifests import Manifest, pod_specs

OVERLAY = REPO / "deploy" / "overlays" / "podman"
PLAYED_KINDS = {"Deployment", "PersistentVolumeClaim", "ConfigMap"}
KEY_SECRETS = {"imgq-api-keys", "imgq-webhook-secrets"}
"""The Secrets of API keys and webhook secrets (placeholders in the overlay)."""
CONTAINERS = {
    "api": "imgq-api-pod-0-api",
    "predict-worker": "imgq-predict-worker-pod-0-worker",
    "train-worker": "imgq-train-worker-pod-0-worker",
    "webhooks-worker": "imgq-webhooks-worker-pod-0-worker",
    "redis": "imgq-redis-pod-0-redis",
}
"""kube play's container names: ``<deployment>-pod-0-<container>``."""


def secret_data(manifests: list[Manifest]) -> dict[str, dict[str, str]]:
    """Every Secret's decoded data, by name."""
    return {
        m["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in m["data"].items()}
        for m in manifests
        if m["kind"] == "Secret"
    }


def _inline_secret_env(pod_spec: Manifest, secrets: dict[str, dict[str, str]]) -> None:
    for container in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
        kept = []
        for variable in container.get("env", []):
            reference = variable.get("valueFrom", {}).get("secretKeyRef")
            if reference is None:
                kept.append(variable)
                continue
            value = secrets[reference["name"]].get(reference["key"])
            if value is None:
                assert reference.get("optional"), f"no {reference} in the rendered Secrets"
                continue
            kept.append({"name": variable["name"], "value": value})
        container["env"] = kept


def _secret_volumes_on_host(
    pod_spec: Manifest, secrets: dict[str, dict[str, str]], directory: Path
) -> None:
    for volume in pod_spec.get("volumes", []):
        if "secret" not in volume:
            continue
        name = volume.pop("secret")["secretName"]
        folder = directory / "secrets" / name
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        for key, value in secrets[name].items():
            (folder / key).write_text(value)
            (folder / key).chmod(0o444)  # kube play does not apply fsGroup
        volume["hostPath"] = {"path": str(folder), "type": "Directory"}


def _own_empty_dirs(workload: str, pod_spec: Manifest) -> None:
    renamed = {}
    for volume in pod_spec.get("volumes", []):
        if "emptyDir" in volume:
            renamed[volume["name"]] = volume["name"] = f"{workload}-{volume['name']}"
    for container in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed.get(mount["name"], mount["name"])


def podman_volumes(played: list[Manifest]) -> list[str]:
    """The named volumes kube play makes for ``played``: claims, emptyDirs, ConfigMap volumes."""
    names = [m["metadata"]["name"] for m in played if m["kind"] == "PersistentVolumeClaim"]
    for manifest in played:
        for pod_spec in pod_specs(manifest):
            for volume in pod_spec.get("volumes", []):
                if "emptyDir" in volume:
                    names.append(volume["name"])
                elif "configMap" in volume:
                    names.append(volume["configMap"]["name"])
    return sorted(set(names))


def _statefulset_as_deployment(statefulset: Manifest) -> list[Manifest]:
    deployment = copy.deepcopy(statefulset)
    deployment["kind"] = "Deployment"
    spec = deployment["spec"]
    claims = spec.pop("volumeClaimTemplates", [])
    spec.pop("serviceName", None)
    name = statefulset["metadata"]["name"]
    made = []
    for claim in claims:
        claim_name = f"{claim['metadata']['name']}-{name}-0"
        made.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim_name},
                "spec": claim["spec"],
            }
        )
        spec["template"]["spec"].setdefault("volumes", []).append(
            {"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim_name}}
        )
    return [*made, deployment]


def for_podman(manifests: list[Manifest], keys_file: str, directory: Path) -> list[Manifest]:
    """The rendered overlay as podman 4.3's kube play can play it (see the module docstring).

    Args:
        manifests: the rendered ``deploy/overlays/podman``.
        keys_file: the API keys file's text, for the two key Secrets.
        directory: where the Secrets' files are written for the host-directory volumes.

    Returns:
        The objects to play, in order.
    """
    secrets = secret_data(manifests)
    for name in KEY_SECRETS:
        secrets[name] = {"api-keys.json": keys_file}
    played: list[Manifest] = []
    for manifest in copy.deepcopy(manifests):
        objects = (
            _statefulset_as_deployment(manifest)
            if manifest["kind"] == "StatefulSet"
            else [manifest]
        )
        for item in objects:
            if item["kind"] not in PLAYED_KINDS:
                continue
            for pod_spec in pod_specs(item):
                pod_spec["restartPolicy"] = "OnFailure"
                _own_empty_dirs(item["metadata"]["name"], pod_spec)
                _inline_secret_env(pod_spec, secrets)
                _secret_volumes_on_host(pod_spec, secrets, directory)
            played.append(item)
    # What the pods refer to first (kube play resolves ConfigMaps and claims as it goes).
    return sorted(played, key=lambda item: item["kind"] == "Deployment")


class KubeStack(Stack):
    """The overlay played on a network of its own; ``down`` removes pods, volumes, network."""

    kind = "kube"

    def __init__(
        self, podman: Podman, directory: Path, keys: tuple[Credentials, Path], name: str
    ) -> None:
        super().__init__(podman)
        self.directory = directory
        self.network = name
        self.keys_file = (keys[1] / "api-keys.json").read_text()
        self.played = directory / "kube.yaml"
        self.volumes: list[str] = []

    def up(self) -> None:
        """Render, adapt and play; the pods' containers by role."""
        played = for_podman(render(OVERLAY), self.keys_file, self.directory)
        self.played.write_text(yaml.safe_dump_all(played, sort_keys=False))
        self.volumes = podman_volumes(played)
        self.podman.run("network", "create", "--label", f"imgq.test={self.network}", self.network)
        self.podman.run("kube", "play", "--network", self.network, str(self.played), timeout=300)
        self.containers = dict(CONTAINERS)
        self.api = f"http://{self.address('api')}:8000"

    def address(self, role: str) -> str:
        """The IP address of ``role``'s pod (its infra container holds the network)."""
        pod = self.podman.inspect("container", self.containers[role])["Pod"]
        infra = self.podman.inspect("pod", str(pod))["InfraContainerID"]
        details = self.podman.inspect("container", str(infra))
        networks: dict[str, Any] = details["NetworkSettings"]["Networks"]
        return str(networks[self.network]["IPAddress"])

    def down(self) -> None:
        """``podman kube down``, then the claims' volumes, the network and leftovers."""
        try:
            if self.played.exists():
                self.podman.run("kube", "down", str(self.played), check=False, timeout=180)
            pods = {
                container.rsplit("-pod-0-", 1)[0] + "-pod-0" for container in CONTAINERS.values()
            }
            self.podman.run("pod", "rm", "-f", "--ignore", *sorted(pods), check=False)
            if self.volumes:
                self.podman.run("volume", "rm", "-f", *self.volumes, check=False)
        finally:
            self.podman.remove_leftovers(f"imgq.test={self.network}")


def main() -> None:
    """Print the adapted objects (for a look at what is played)."""
    played = for_podman(render(OVERLAY), json.dumps([]), Path("/tmp/imgq-kube-preview"))
    print(yaml.safe_dump_all(played, sort_keys=False))


if __name__ == "__main__":
    main()
