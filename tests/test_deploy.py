"""The container images and the Kubernetes manifests, checked offline in a few seconds.

* ``deploy/overlays/*`` are rendered by a small Kustomize renderer, ``tests.support.kustomize``
  (only the subset of Kustomize that ``deploy/`` uses; anything else is an error, not a silent
  difference), tested here and cross-checked against ``kubectl kustomize`` where kubectl exists.
* Every rendered object is validated: built-in kinds with ``kubernetes-validate`` against the
  pinned Kubernetes version's schemas (strict: unknown fields fail), KEDA objects against the
  CRD's ``openAPIV3Schema`` kept in ``tests/data/keda`` (made strict the same way).
* Then the parts are checked against each other and against the application: selectors,
  references, probes, KEDA triggers against the Celery queues and the Redis Service, the
  ConfigMap against ``imgq.settings.Settings``, the image's command lines against
  ``imgq.local.commands``, Dockerfiles with hadolint and the shell scripts with shellcheck.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml

from imgq.local.commands import (
    api_argv,
    predict_worker_argv,
    train_worker_argv,
    webhooks_worker_argv,
)
from imgq.redis_client import SENTINEL_PORT, SentinelTarget, parse_sentinel_url
from imgq.settings import Settings
from tests.support.kustomize import (
    KustomizeError,
    apply_json6902,
    kustomize_base64,
    kustomize_hash,
    render,
    strategic_merge,
)
from tests.support.manifests import (
    Manifest,
    containers,
    env_names,
    env_var,
    generated,
    init_containers,
    main_containers,
    one,
    probe_command,
    role,
    selects,
    split_image,
    template_labels,
    volumes,
    workloads,
)

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
DOCKER = REPO / "docker"
KEDA_SCHEMAS = Path(__file__).resolve().parent / "data" / "keda"
OVERLAYS = ["cpu", "gpu", "sentinel"]
PODMAN_OVERLAY = "podman"
"""``cpu`` for ``podman kube play`` on one machine (tests/containers), not for a cluster: it is
rendered and validated like the others, and its differences from ``cpu`` are pinned below; the
checks of ``OVERLAYS`` do not apply (it drops the container ports on purpose)."""

KUBERNETES_VERSION = "1.33.0"
"""Kubernetes version whose schemas the manifests must satisfy (shipped by kubernetes-validate)."""


# --- Queries on rendered manifests ------------------------------------------------------------


@functools.cache
def _rendered(overlay: str) -> tuple[Manifest, ...]:
    return tuple(render(DEPLOY / "overlays" / overlay))


def rendered(overlay: str) -> list[Manifest]:
    """A fresh copy of an overlay's rendered objects (tests may change their copy)."""
    return copy.deepcopy(list(_rendered(overlay)))


def config(manifests: list[Manifest]) -> dict[str, str]:
    """The IMGQ_* settings of the imgq ConfigMap."""
    data: dict[str, str] = generated(manifests, "ConfigMap", "imgq-config")["data"]
    return data


def settings_from(variables: dict[str, str]) -> Settings:
    """Settings from IMGQ_* variables, validated, without reading this process's environment."""
    fields = {f"IMGQ_{name.upper()}" for name in Settings.model_fields}
    assert set(variables) <= fields, f"not imgq settings: {sorted(set(variables) - fields)}"
    return Settings.model_validate(
        {key.removeprefix("IMGQ_").lower(): value for key, value in variables.items()}
    )


def secret(manifests: list[Manifest]) -> dict[str, str]:
    """The decoded data of the Redis Secret."""
    data = generated(manifests, "Secret", "imgq-redis")["data"]
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


# --- Validation -------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """A CRD schema that rejects unknown fields, as the API server's strict validation does."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


@functools.cache
def keda_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """A validator per (apiVersion, kind) of the KEDA CRDs in tests/data/keda."""
    validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
    for path in sorted(KEDA_SCHEMAS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            api_version = f"{crd['spec']['group']}/{version['name']}"
            kind = crd["spec"]["names"]["kind"]
            validators[(api_version, kind)] = jsonschema.Draft7Validator(schema)
    return validators


NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def validate(manifest: Manifest) -> None:
    """Raise if the object would not be accepted by the pinned Kubernetes (or KEDA) version."""
    if not NAME.fullmatch(manifest["metadata"]["name"]):
        raise ValueError(f"invalid name {manifest['metadata']['name']!r}")
    if manifest["apiVersion"].startswith("keda.sh/"):
        validator = keda_validators().get((manifest["apiVersion"], manifest["kind"]))
        if validator is None:
            raise ValueError(f"no schema in {KEDA_SCHEMAS} for {manifest['kind']}")
        validator.validate(manifest)
    else:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


# --- The renderer itself ------------------------------------------------------------------------


def test_renderer_hash_and_encoding_match_kustomize() -> None:
    # Known outputs of kustomize 5.5 for `configMapGenerator: [{name: c, literals: [a=b]}]`.
    assert kustomize_hash({"kind": "ConfigMap", "data": {"a": "b"}}) == "4h2mbtbbt6"
    url = "redis://:change-me-not-a-real-password@imgq-redis:6379/0"
    assert kustomize_base64(url) == (
        "cmVkaXM6Ly86Y2hhbmdlLW1lLW5vdC1hLXJlYWwtcGFzc3dvcmRAaW1ncS1yZWRpczo2Mz\nc5LzA=\n"
    )


def test_strategic_merge_orders_lists_like_kustomize() -> None:
    target = {
        "containers": [
            {
                "name": "a",
                "image": "x",
                "args": ["q"],
                "env": [{"name": "E1", "value": "1"}, {"name": "E2", "value": "2"}],
            },
            {"name": "b", "image": "y"},
        ],
        "tolerations": [{"key": "k1"}],
    }
    patch = {
        "containers": [
            {"name": "c", "image": "w"},
            {
                "name": "a",
                "args": ["s"],
                "env": [{"name": "N", "value": "n"}, {"name": "E2", "value": "22"}],
            },
        ],
        "tolerations": [{"key": "k2"}],
    }
    assert strategic_merge(target, patch) == {
        "containers": [
            {"name": "c", "image": "w"},
            {
                "name": "a",
                "image": "x",
                "args": ["s"],
                "env": [
                    {"name": "N", "value": "n"},
                    {"name": "E2", "value": "22"},
                    {"name": "E1", "value": "1"},
                ],
            },
            {"name": "b", "image": "y"},
        ],
        "tolerations": [{"key": "k2"}],
    }
    with pytest.raises(KustomizeError):
        strategic_merge({"items": [{"a": 1}]}, {"items": [{"a": 2}]})


def test_json_patch_and_image_parsing() -> None:
    manifest: Manifest = {"spec": {"max": 1, "list": [1, 2]}}
    apply_json6902(
        manifest,
        [
            {"op": "replace", "path": "/spec/max", "value": 4},
            {"op": "add", "path": "/spec/list/-", "value": 3},
            {"op": "remove", "path": "/spec/list/0"},
        ],
    )
    assert manifest == {"spec": {"max": 4, "list": [2, 3]}}
    with pytest.raises(KustomizeError):
        apply_json6902(manifest, [{"op": "replace", "path": "/spec/min", "value": 0}])
    assert split_image("host:5000/imgq:1.2@sha256:ab") == ("host:5000/imgq", "1.2", "sha256:ab")
    assert split_image("registry:5000/imgq") == ("registry:5000/imgq", None, None)


@pytest.mark.parametrize("overlay", [*OVERLAYS, PODMAN_OVERLAY])
def test_renderer_agrees_with_kubectl_kustomize(overlay: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the renderer is checked by its own tests only")
    output = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    theirs = {(m["kind"], m["metadata"]["name"]): m for m in yaml.safe_load_all(output) if m}
    ours = {(m["kind"], m["metadata"]["name"]): m for m in rendered(overlay)}
    assert sorted(ours) == sorted(theirs)
    for key, manifest in ours.items():
        assert manifest == theirs[key], key


def test_a_patch_that_matches_nothing_fails_the_render(tmp_path: Path) -> None:
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    patch = tmp_path / "deploy" / "overlays" / "gpu" / "predict-worker-gpu.yaml"
    patch.write_text(patch.read_text().replace("name: imgq-predict-worker", "name: imgq-predict"))
    with pytest.raises(KustomizeError, match="matches no resource"):
        render(tmp_path / "deploy" / "overlays" / "gpu")


# --- Schemas --------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", [*OVERLAYS, PODMAN_OVERLAY])
def test_every_object_is_valid_for_the_pinned_kubernetes_and_keda(overlay: str) -> None:
    manifests = rendered(overlay)
    for manifest in manifests:
        validate(manifest)
    kinds = {m["kind"] for m in manifests}
    assert {
        "Deployment",
        "StatefulSet",
        "Service",
        "HorizontalPodAutoscaler",
        "ScaledObject",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "ConfigMap",
        "Secret",
    } <= kinds


PODMAN_SETTINGS = {
    "IMGQ_WEBHOOK_ALLOW_PRIVATE": "true",
    "IMGQ_WEBHOOK_RETRY_SCHEDULE_S": "0,1,1",
    "IMGQ_VISIBILITY_TIMEOUT_S": "8",
    "IMGQ_UNACKED_RESTORE_INTERVAL_S": "1",
    "IMGQ_MAX_BATCH_DELAY_MS": "20",
}


def _without_podman_differences(manifests: list[Manifest]) -> list[Any]:
    """The objects with what the podman overlay may change taken out: container ports and
    images, the API's liveness probe, its settings and Redis URL, generated names' hashes."""
    for manifest in manifests:
        manifest["metadata"].get("labels", {}).pop("imgq.io/variant", None)
        for container in containers(manifest):
            container.pop("ports", None)
            container.pop("image")
            if manifest["metadata"]["name"] == "imgq-api":
                container.pop("livenessProbe")
        if manifest["kind"] == "ConfigMap" and "IMGQ_MODEL_STORE" in manifest["data"]:
            manifest["data"] = {
                k: v for k, v in manifest["data"].items() if k not in PODMAN_SETTINGS
            }
        if manifest["kind"] == "Secret" and "IMGQ_REDIS_URL" in manifest["data"]:
            manifest["data"].pop("IMGQ_REDIS_URL")
    text = json.dumps(manifests, sort_keys=True)
    unhashed: list[Any] = json.loads(re.sub(r"(imgq-[a-z-]+)-[a-z0-9]{10}\b", r"\1", text))
    return unhashed


def test_podman_overlay_is_cpu_with_only_what_kube_play_needs() -> None:
    podman, cpu = rendered(PODMAN_OVERLAY), rendered("cpu")
    settings = config(podman)
    assert {key: settings[key] for key in PODMAN_SETTINGS} == PODMAN_SETTINGS
    settings_from(settings)
    # kube play has no Services: the Redis Deployment's pod answers to <name>-pod-0.
    assert urlparse(secret(podman)["IMGQ_REDIS_URL"]).hostname == "imgq-redis-pod-0"
    images = {c["image"] for m in podman for c in containers(m)}
    assert images == {"localhost/imgq:0.1.0", "localhost/imgq-redis-standin:7"}
    for manifest in podman:
        assert all("ports" not in c for c in containers(manifest)), manifest["metadata"]["name"]
    api = main_containers(one(podman, "Deployment", "imgq-api"))[0]
    assert api["livenessProbe"]["exec"]["command"] == ["imgq-healthcheck"]
    assert _without_podman_differences(podman) == _without_podman_differences(cpu)


def _break_deployment_replicas(manifests: list[Manifest]) -> Manifest:
    manifest = one(manifests, "Deployment", "imgq-api")
    manifest["spec"]["replicas"] = "two"
    return manifest


def _break_container_field(manifests: list[Manifest]) -> Manifest:
    manifest = one(manifests, "Deployment", "imgq-predict-worker")
    manifest["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    return manifest


def _break_scaled_object_type(manifests: list[Manifest]) -> Manifest:
    manifest = one(manifests, "ScaledObject", "imgq-predict-worker")
    manifest["spec"]["minReplicaCount"] = "one"
    return manifest


def _break_scaled_object_field(manifests: list[Manifest]) -> Manifest:
    manifest = one(manifests, "ScaledObject", "imgq-train-worker")
    manifest["spec"]["triggers"][0]["metdata"] = manifest["spec"]["triggers"][0].pop("metadata")
    return manifest


def _break_name(manifests: list[Manifest]) -> Manifest:
    manifest = one(manifests, "Service", "imgq-api")
    manifest["metadata"]["name"] = "imgq_api"
    return manifest


@pytest.mark.parametrize(
    "breakage",
    [
        _break_deployment_replicas,
        _break_container_field,
        _break_scaled_object_type,
        _break_scaled_object_field,
        _break_name,
    ],
)
def test_a_broken_manifest_fails_validation(breakage: Any) -> None:
    manifest = breakage(rendered("gpu"))
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate(manifest)


def test_an_unknown_kind_fails_validation() -> None:
    with pytest.raises(ValueError, match="no schema"):
        validate({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJob", "metadata": {"name": "x"}})
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}})


# --- How the objects fit together -----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_targets_point_at_real_pods(overlay: str) -> None:
    manifests = rendered(overlay)
    pods = [template_labels(w) for w in workloads(manifests)]
    for workload in workloads(manifests):
        assert selects(workload["spec"]["selector"], template_labels(workload))
        for constraint in workload["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            assert selects(constraint["labelSelector"], template_labels(workload))
    for manifest in manifests:
        if manifest["kind"] == "Service":
            selector = {"matchLabels": manifest["spec"]["selector"]}
            matched = [w for w in workloads(manifests) if selects(selector, template_labels(w))]
            assert len(matched) == 1, manifest["metadata"]["name"]
            port_names = {p.get("name") for c in containers(matched[0]) for p in c.get("ports", [])}
            assert {p["targetPort"] for p in manifest["spec"]["ports"]} <= port_names
        if manifest["kind"] in {"PodDisruptionBudget", "NetworkPolicy"}:
            selector = manifest["spec"].get("selector") or manifest["spec"]["podSelector"]
            matching = sum(selects(selector, labels) for labels in pods)
            assert matching == 1, manifest["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscalers_own_their_replica_counts(overlay: str) -> None:
    manifests = rendered(overlay)
    scalers = [m for m in manifests if m["kind"] in {"HorizontalPodAutoscaler", "ScaledObject"}]
    targets = [s["spec"]["scaleTargetRef"]["name"] for s in scalers]
    assert len(targets) == len(set(targets)), "two autoscalers fight over one Deployment"
    for name in targets:
        deployment = one(manifests, "Deployment", name)
        assert "replicas" not in deployment["spec"], f"{name}: apply would reset the autoscaler"
    assert set(targets) == {"imgq-api", "imgq-predict-worker", "imgq-train-worker"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay: str) -> None:
    manifests = rendered(overlay)
    names = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    data = {(m["kind"], m["metadata"]["name"]): m.get("data", {}) for m in manifests}
    for workload in workloads(manifests):
        pod_spec = workload["spec"]["template"]["spec"]
        if "serviceAccountName" in pod_spec:
            assert ("ServiceAccount", pod_spec["serviceAccountName"]) in names
        for volume in pod_spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names
        mounted = {m["name"] for c in containers(workload) for m in c.get("volumeMounts", [])}
        declared = {v["name"] for v in pod_spec.get("volumes", [])}
        claims = workload["spec"].get("volumeClaimTemplates", [])
        declared |= {claim["metadata"]["name"] for claim in claims}
        assert mounted <= declared
        for volume in pod_spec.get("volumes", []):
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in names
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
        for container in containers(workload):
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in names
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):  # optional: only during a rotation
                    assert ref["key"] in data[("Secret", ref["name"])], ref


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_hardened_and_bounded(overlay: str) -> None:
    for workload in workloads(rendered(overlay)):
        pod_spec = workload["spec"]["template"]["spec"]
        assert pod_spec["securityContext"]["runAsNonRoot"] is True
        assert pod_spec["securityContext"]["runAsUser"] > 0
        assert pod_spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod_spec.get("automountServiceAccountToken") is False
        # Service links would add IMGQ_<SERVICE>_* variables, in the settings' namespace.
        assert pod_spec.get("enableServiceLinks") is False
        for container in containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound])
            name, tag, digest = split_image(container["image"])
            assert (tag and tag != "latest") or digest, container["image"]
            assert "/" in name or name == "redis", f"unresolved image placeholder {name}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_shutdown(overlay: str) -> None:
    manifests = rendered(overlay)
    settings = config(manifests)
    for workload in workloads(manifests):
        name = workload["metadata"]["name"]
        for container in main_containers(workload):
            assert {"livenessProbe", "readinessProbe"} <= set(container), name
        for container in init_containers(workload):  # run to completion: no probes allowed
            assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(container), name
    api = one(manifests, "Deployment", "imgq-api")
    api_container = main_containers(api)[0]
    port = int(settings["IMGQ_API_BIND"].rpartition(":")[2])
    assert api_container["ports"] == [{"name": "http", "containerPort": port}]
    assert api_container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api_container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api_container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    # preStop sleep, then gunicorn's --graceful-timeout 20, inside the grace period.
    assert api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 5 + 20
    prometheus = {v["name"]: v["value"] for v in api_container["env"] if "value" in v}
    assert {"mountPath": prometheus["PROMETHEUS_MULTIPROC_DIR"], "name": "prometheus"} in (
        api_container["volumeMounts"]
    )

    predict = one(manifests, "Deployment", "imgq-predict-worker")
    worker = main_containers(predict)[0]
    assert settings["IMGQ_READY_FILE"].startswith("/tmp/")  # an emptyDir, writable
    for probe in ("startupProbe", "readinessProbe"):
        assert probe_command(worker[probe]) == 'sh -c test -f "$IMGQ_READY_FILE"'
    assert 'rm -f "$IMGQ_READY_FILE"' in probe_command(worker["lifecycle"]["preStop"])
    metrics_port = int(settings["IMGQ_METRICS_PORT"])
    assert worker["ports"] == [{"name": "metrics", "containerPort": metrics_port}]

    for workload in workloads(manifests):
        queue = role(workload).removesuffix("-worker")
        if role(workload).endswith("-worker"):
            liveness = probe_command(main_containers(workload)[0]["livenessProbe"])
            assert f'inspect ping -d "{queue}@$HOSTNAME"' in liveness
    train = one(manifests, "Deployment", "imgq-train-worker")
    time_limit_s = settings_from(settings).train_time_limit_s
    grace_s = train["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace_s >= time_limit_s + 60, "a running fine-tune must finish in the warm shutdown"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_triggers_watch_the_celery_queues(overlay: str) -> None:
    manifests = rendered(overlay)
    settings, redis_secret = config(manifests), secret(manifests)
    url = urlparse(redis_secret["IMGQ_REDIS_URL"])
    redis_service = one(manifests, "Service", "imgq-redis")
    namespace = redis_service["metadata"]["namespace"]
    known = {
        "address",
        "host",
        "port",
        "listName",
        "listLength",
        "activationListLength",
        "databaseIndex",
        "enableTLS",
        "unsafeSsl",
        "usernameFromEnv",
        "passwordFromEnv",
        "addressFromEnv",
        "hostFromEnv",
        "portFromEnv",
        "addresses",
        "sentinelMaster",
    }
    sentinel = parse_sentinel_url(redis_secret["IMGQ_REDIS_URL"])
    scaled = [m for m in manifests if m["kind"] == "ScaledObject"]
    for scaled_object in scaled:
        target = one(manifests, "Deployment", scaled_object["spec"]["scaleTargetRef"]["name"])
        (trigger,) = scaled_object["spec"]["triggers"]
        metadata = trigger["metadata"]
        assert set(metadata) <= known, set(metadata) - known
        assert metadata["listName"] == role(target).removesuffix("-worker")
        if sentinel is not None:  # the sentinels and master imgq asks (test_sentinel_... below)
            assert trigger["type"] == "redis-sentinel"
            addresses = [f"{host}:{port}" for host, port in sentinel.sentinels]
            assert metadata["addresses"].split(",") == addresses
            assert metadata["sentinelMaster"] == sentinel.master_name
            assert metadata["databaseIndex"] == str(sentinel.db)
        else:
            assert trigger["type"] == "redis"
            assert metadata["address"] == (
                f"{redis_service['metadata']['name']}.{namespace}.svc.cluster.local:{url.port}"
            )
            assert url.port in [p["port"] for p in redis_service["spec"]["ports"]]
            assert metadata["databaseIndex"] == url.path.strip("/")
        assert metadata["passwordFromEnv"] in env_names(main_containers(target)[0])
        assert metadata["usernameFromEnv"] in env_names(main_containers(target)[0])
    predict = one(manifests, "ScaledObject", "imgq-predict-worker")["spec"]
    assert predict["triggers"][0]["metadata"]["listLength"] == settings["IMGQ_MAX_BATCH_SIZE"], (
        "scale when a batch waits beyond what the workers already prefetched"
    )
    assert predict["minReplicaCount"] >= 1, "keep a warm worker: loading a model takes long"
    train = one(manifests, "ScaledObject", "imgq-train-worker")["spec"]
    assert (train["minReplicaCount"], train["triggers"][0]["metadata"]["listLength"]) == (0, "1")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_url_secret_and_server_agree(overlay: str) -> None:
    manifests = rendered(overlay)
    redis_secret = secret(manifests)
    url = urlparse(redis_secret["IMGQ_REDIS_URL"])
    sentinel = parse_sentinel_url(redis_secret["IMGQ_REDIS_URL"])
    redis = one(manifests, "StatefulSet", "imgq-redis")
    (server,) = main_containers(redis)
    args = server["args"]
    if sentinel is None:
        assert (url.username, url.password) == ("imgq", redis_secret["REDIS_IMGQ_PASSWORD"])
        assert url.hostname == one(manifests, "Service", "imgq-redis")["metadata"]["name"]
        port = url.port
    else:  # no user name in the Sentinel form: imgq logs in as `default` (redis-users.acl)
        assert sentinel.password == redis_secret["REDIS_IMGQ_PASSWORD"]
        assert "@REDIS_IMGQ_PASSWORD@" in acl_users(acl_template(manifests))["default"]
        assert args[0] == env_var(init_containers(redis)[0], "REDIS_CONF")["value"]
        port = REDIS_PORT
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert "--requirepass" not in args, "users and passwords come from the ACL file"
    (init,) = init_containers(redis)
    acl_file = args[args.index("--aclfile") + 1]
    assert env_var(init, "ACL_FILE")["value"] == acl_file
    (acl_mount,) = [m for m in server["volumeMounts"] if acl_file.startswith(m["mountPath"] + "/")]
    assert acl_mount["readOnly"] is True
    assert volumes(redis)[acl_mount["name"]]["emptyDir"]["medium"] == "Memory"
    assert any(m["name"] == acl_mount["name"] for m in init["volumeMounts"])
    assert {"name": "data", "mountPath": args[args.index("--dir") + 1]} in server["volumeMounts"]
    assert [t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]] == ["data"]
    assert server["ports"][0]["containerPort"] == port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_map_holds_valid_settings(overlay: str) -> None:
    manifests = rendered(overlay)
    settings_from(config(manifests))
    settings_from({**config(manifests), "IMGQ_REDIS_URL": secret(manifests)["IMGQ_REDIS_URL"]})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_api_and_workers_reach_redis(overlay: str) -> None:
    manifests = rendered(overlay)
    policy = one(manifests, "NetworkPolicy", "imgq-redis")
    rule, *replication = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    for other in replication:  # Sentinel: the other servers and the sentinels, nobody else
        assert other["ports"] == rule["ports"]
        (peer,) = other["from"]
        peers = {
            w["metadata"]["name"]
            for w in workloads(manifests)
            if selects(peer["podSelector"], template_labels(w))
        }
        assert peers == {"imgq-redis", "imgq-redis-sentinel"}
    in_namespace = [peer["podSelector"] for peer in rule["from"] if "namespaceSelector" not in peer]
    for workload in workloads(manifests):
        clients = "IMGQ_REDIS_URL" in env_names(main_containers(workload)[0])
        admitted = any(selects(s, template_labels(workload)) for s in in_namespace)
        assert clients == admitted, workload["metadata"]["name"]
    # The other peer is the KEDA operator, which reads the queue lengths.
    (keda,) = [peer for peer in rule["from"] if "namespaceSelector" in peer]
    assert keda["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"}


SHARED_STORES = [
    ("IMGQ_MODEL_STORE", "imgq-models", ("imgq-api", "imgq-predict-worker", "imgq-train-worker")),
    ("IMGQ_UPLOAD_DIR", "imgq-uploads", ("imgq-api", "imgq-train-worker")),
]
"""Setting, ReadWriteMany claim, and the Deployments that share it at that path."""


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_and_workers_share_the_model_store_and_uploads(overlay: str) -> None:
    manifests = rendered(overlay)
    for setting, claim_name, deployments in SHARED_STORES:
        claim = one(manifests, "PersistentVolumeClaim", claim_name)
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        path = config(manifests)[setting]
        for name in deployments:
            workload = one(manifests, "Deployment", name)
            mounts = main_containers(workload)[0]["volumeMounts"]
            (mount,) = [m for m in mounts if m["mountPath"] == path]
            assert volumes(workload)[mount["name"]]["persistentVolumeClaim"]["claimName"] == (
                claim_name
            )


def test_only_gpu_prediction_workers_ask_for_gpus() -> None:
    for overlay in OVERLAYS:
        for workload in workloads(rendered(overlay)):
            on_gpu = overlay == "gpu" and workload["metadata"]["name"] == "imgq-predict-worker"
            for container in containers(workload):
                gpus = container["resources"]["limits"].get("nvidia.com/gpu")
                main = container in main_containers(workload)
                assert gpus == (1 if on_gpu and main else None), (overlay, container["name"])
                # Init containers run the pod's image too: a GPU node pulls one image.
                assert split_image(container["image"])[0].endswith("-gpu") == on_gpu


# --- Secrets and trust inside the cluster --------------------------------------------------------

KEY_SECRETS = [
    ("imgq-api-keys", "imgq-api", "/etc/imgq/api-keys"),
    ("imgq-webhook-secrets", "imgq-webhooks-worker", "/etc/imgq/webhook-secrets"),
]
"""A Secret of keys, the one Deployment that mounts it, and where (IMGQ_API_KEYS_FILE's folder)."""
KEYS_FILE = "api-keys.json"
"""The key of both Secrets: the file IMGQ_API_KEYS_FILE names in the mounted folder."""


def secret_mounts(workload: Manifest, secret_name: str) -> list[tuple[Manifest, Manifest]]:
    """(container, volumeMount) for every mount of a volume that holds the Secret."""
    holding = {
        name
        for name, volume in volumes(workload).items()
        if volume.get("secret", {}).get("secretName") == secret_name
        or any(
            source.get("secret", {}).get("name") == secret_name
            for source in volume.get("projected", {}).get("sources", [])
        )
    }
    return [
        (container, mount)
        for container in containers(workload)
        for mount in container.get("volumeMounts", [])
        if mount["name"] in holding
    ]


def secret_env_references(container: Manifest) -> set[str]:
    """Names of the Secrets a container reads into its environment."""
    names = {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            names.add(ref["name"])
    return names


@pytest.mark.parametrize(("secret_name", "deployment", "folder"), KEY_SECRETS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_key_secrets_are_mounted_into_their_one_pod_only(
    overlay: str, secret_name: str, deployment: str, folder: str
) -> None:
    from imgq.api_keys import parse_keys

    manifests = rendered(overlay)
    # No hash suffix: pods mount it by name and Kubernetes updates it in place.
    key_secret = one(manifests, "Secret", secret_name)
    placeholder = base64.b64decode(key_secret["data"][KEYS_FILE]).decode()
    assert set(key_secret["data"]) == {KEYS_FILE}
    assert parse_keys(placeholder) == [], "the committed placeholder holds no key"
    for workload in workloads(manifests):
        name = workload["metadata"]["name"]
        mounts = secret_mounts(workload, secret_name)
        for container in containers(workload):
            assert secret_name not in secret_env_references(container), (name, container["name"])
        if name != deployment:
            assert mounts == [], f"{name} must not get {secret_name}"
            continue
        ((container, mount),) = mounts
        assert container is main_containers(workload)[0]
        assert mount["mountPath"] == folder
        assert mount["readOnly"] is True
        # subPath mounts are never updated by Kubernetes: a revoked key would keep working.
        assert "subPath" not in mount and "subPathExpr" not in mount
        mode = volumes(workload)[mount["name"]]["secret"]["defaultMode"]
        assert mode & 0o007 == 0, "no access for other users"
        assert env_var(container, "IMGQ_API_KEYS_FILE")["value"] == f"{folder}/{KEYS_FILE}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_api_and_the_webhooks_worker_read_a_keys_file(overlay: str) -> None:
    manifests = rendered(overlay)
    with_keys = {deployment for _, deployment, _ in KEY_SECRETS}
    for workload in workloads(manifests):
        for container in containers(workload):
            names = env_names(container)
            assert "IMGQ_API_KEYS" not in names, "keys inline in a pod spec"
            expected = workload["metadata"]["name"] in with_keys and container in (
                main_containers(workload)
            )
            assert ("IMGQ_API_KEYS_FILE" in names) == expected, container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_config_map_carries_no_keys(overlay: str) -> None:
    settings = config(rendered(overlay))
    assert not [key for key in settings if key.startswith("IMGQ_API_KEYS")]
    assert not [value for value in settings.values() if "key_sha256" in value or "whsec_" in value]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_pod_mounts_a_secret_or_config_map_with_sub_path(overlay: str) -> None:
    for workload in workloads(rendered(overlay)):
        refreshed = {
            name
            for name, volume in volumes(workload).items()
            if {"secret", "configMap", "projected"} & set(volume)
        }
        for container in containers(workload):
            for mount in container.get("volumeMounts", []):
                if mount["name"] in refreshed:
                    assert "subPath" not in mount and "subPathExpr" not in mount, mount


MODEL_WRITERS = {"imgq-api", "imgq-train-worker", "imgq-webhooks-worker"}
"""Deployments that write the model store: dataset images, settings and events (API), new
versions (training), the sweep and rollout policies (webhooks worker)."""


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prediction_pods_mount_the_models_read_only(overlay: str) -> None:
    manifests = rendered(overlay)
    settings = config(manifests)
    for workload in workloads(manifests):
        name = workload["metadata"]["name"]
        claims = {
            volume_name: volume
            for volume_name, volume in volumes(workload).items()
            if volume.get("persistentVolumeClaim", {}).get("claimName") == "imgq-models"
        }
        mounts = [
            mount
            for container in containers(workload)
            for mount in container.get("volumeMounts", [])
            if mount["name"] in claims
        ]
        if name == "imgq-predict-worker":
            assert mounts and all(mount.get("readOnly") is True for mount in mounts)
            assert all(v["persistentVolumeClaim"]["readOnly"] is True for v in claims.values())
        elif name in MODEL_WRITERS:
            assert mounts and not any(mount.get("readOnly") for mount in mounts), name
        else:
            assert not mounts, name
    # What a prediction worker does write goes to its writable emptyDir.
    predict = one(manifests, "Deployment", "imgq-predict-worker")
    worker = main_containers(predict)[0]
    for setting in ("IMGQ_MODEL_CACHE_DIR", "IMGQ_READY_FILE"):
        (mount,) = [
            m for m in worker["volumeMounts"] if settings[setting].startswith(m["mountPath"] + "/")
        ]
        assert "emptyDir" in volumes(predict)[mount["name"]] and not mount.get("readOnly")


def test_prediction_pods_wait_for_the_api_to_prepare_the_store(tmp_path: Path) -> None:
    from ml.registry import BUILTIN_MODEL_ID, ModelRegistry, prepare_store
    from workers.model_cache import ModelCache

    manifests = rendered("cpu")
    predict = one(manifests, "Deployment", "imgq-predict-worker")
    (init,) = init_containers(predict)
    assert [m["mountPath"] for m in init["volumeMounts"]] == [config(manifests)["IMGQ_MODEL_STORE"]]
    python, *argv = init["args"]
    assert python == "python3"

    def start_init(store: Path) -> subprocess.Popen[str]:
        env = {**config(manifests), "IMGQ_MODEL_STORE": str(store), "PATH": os.environ["PATH"]}
        return subprocess.Popen(
            [sys.executable, *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    # A store nobody can prepare yet (here: below a file; in the pod: read-only): it waits.
    (tmp_path / "file").write_text("")
    waiting = start_init(tmp_path / "file" / "models")
    try:
        assert waiting.stdout is not None
        first_line = waiting.stdout.readline()
        assert "waiting for the API to prepare the model store" in first_line
        assert waiting.poll() is None
    finally:
        waiting.kill()
        waiting.communicate(timeout=30)
    # A store the API prepared: it returns at once and writes nothing, and neither does the
    # worker's own start-up (ModelCache.ensure_default), so both work on the read-only mount.
    store = tmp_path / "models"
    settings = settings_from(config(manifests)).model_copy(update={"model_store": str(store)})
    prepare_store(
        ModelRegistry(str(store)),
        legacy_namespace=settings.legacy_model_owner,
        backbone=settings.default_backbone,
        created_at=0.0,
    )
    before = {path: path.stat().st_mtime_ns for path in store.rglob("*")}
    prepared = start_init(store)
    assert prepared.communicate(timeout=60)[0] == ""
    assert prepared.returncode == 0
    assert ModelCache(settings).ensure_default() == BUILTIN_MODEL_ID
    assert {path: path.stat().st_mtime_ns for path in store.rglob("*")} == before


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_on_a_command_line(overlay: str) -> None:
    manifests = rendered(overlay)
    values = [v for m in manifests if m["kind"] == "Secret" for v in m["data"].values()]
    secrets = [base64.b64decode(value).decode() for value in values]
    secrets = [value for value in secrets if len(value) > 4]  # not "[]\n"
    for workload in workloads(manifests):
        for container in containers(workload):
            argv = " ".join([*container.get("command", []), *container.get("args", [])])
            assert not [value for value in secrets if value in argv], container["name"]
            assert "requirepass" not in argv and " -a " not in argv
            # Kubernetes expands $(NAME) in command and args: a Secret's variable there would
            # put its value on the command line.
            from_secrets = {
                variable["name"]
                for variable in container.get("env", [])
                if "secretKeyRef" in variable.get("valueFrom", {})
            }
            assert not [name for name in from_secrets if f"$({name})" in argv], container["name"]


def acl_template(manifests: list[Manifest]) -> str:
    """The users of the Redis ACL file, before its init container puts the password hashes in."""
    text: str = generated(manifests, "ConfigMap", "imgq-redis-acl")["data"]["users.acl"]
    return text


def acl_users(template: str) -> dict[str, list[str]]:
    """The rules of each user in an ACL file (or its template)."""
    users = {}
    for line in template.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, name, *rules = line.split()
            assert keyword == "user", line
            users[name] = rules
    return users


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_authenticates_as_the_read_only_keda_user(overlay: str) -> None:
    manifests = rendered(overlay)
    redis_secret = secret(manifests)
    assert redis_secret["REDIS_KEDA_PASSWORD"] != redis_secret["REDIS_IMGQ_PASSWORD"]
    keda = acl_users(acl_template(manifests))["keda"]
    assert "@REDIS_KEDA_PASSWORD@" in keda and "-@all" in keda and "+@all" not in keda
    for scaled_object in [m for m in manifests if m["kind"] == "ScaledObject"]:
        (trigger,) = scaled_object["spec"]["triggers"]
        metadata = trigger["metadata"]
        assert not {"password", "username"} & set(metadata), "no credentials inline"
        assert "authenticationRef" not in trigger
        target = one(manifests, "Deployment", scaled_object["spec"]["scaleTargetRef"]["name"])
        worker = main_containers(target)[0]
        assert env_var(worker, metadata["usernameFromEnv"])["value"] == "keda"
        password = env_var(worker, metadata["passwordFromEnv"])["valueFrom"]["secretKeyRef"]
        assert password["name"] == generated(manifests, "Secret", "imgq-redis")["metadata"]["name"]
        assert password["key"] == "REDIS_KEDA_PASSWORD"


def render_acl(manifests: list[Manifest], tmp_path: Path, **extra: str) -> Path:
    """Run the Redis init container's script here: the ACL file it would write."""
    redis_set = one(manifests, "StatefulSet", "imgq-redis")
    (init,) = init_containers(redis_set)
    assert init["command"] == ["sh", "-c"]
    template, rendered_file = tmp_path / "users.acl.template", tmp_path / "users.acl"
    template.write_text(acl_template(manifests))
    redis_secret = secret(manifests)
    env = {
        "PATH": os.environ["PATH"],
        "ACL_TEMPLATE": str(template),
        "ACL_FILE": str(rendered_file),
    }
    for variable in init["env"]:
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["key"] in redis_secret:
            env[variable["name"]] = redis_secret[ref["key"]]
    subprocess.run(["sh", "-c", init["args"][0]], env={**env, **extra}, check=True, timeout=30)
    return rendered_file


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[Callable[[Path], int]]:
    """Starts redis-server with an ACL file; returns its port."""
    from imgq.local.supervisor import free_port, wait_until

    started: list[subprocess.Popen[bytes]] = []

    def start(acl_file: Path) -> int:
        port = free_port()
        argv = [tool("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
        argv += ["--aclfile", str(acl_file), "--save", "", "--appendonly", "no", "--dir"]
        started.append(subprocess.Popen([*argv, str(tmp_path)], stdout=subprocess.DEVNULL))
        wait_until(lambda: b"NOAUTH" in _raw_ping(port), 10, "redis-server")
        return port

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def redis_as(port: int, user: str, password: str, protocol: int = 2) -> Any:
    """A client of the local Redis logged in as ``user``; a refused login fails at once."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(
        port=port, username=user, password=password, protocol=protocol, retry=Retry(NoBackoff(), 0)
    )


def _raw_ping(port: int) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
        connection.sendall(b"PING\r\n")
        return connection.recv(200)


KEDA_SCRIPT = """
    local listName = KEYS[1]
    local listType = redis.call('type', listName).ok
    local cmd = {zset = 'zcard', set = 'scard', list = 'llen', hash = 'hlen', none = 'llen'}
    return redis.call(cmd[listType], listName)
"""
"""What KEDA's redis scaler runs to read a list's length (pkg/scalers/redis_scaler.go)."""


def test_redis_users_per_role(tmp_path: Path, acl_redis: Callable[[Path], int]) -> None:
    import redis

    manifests = rendered("cpu")
    redis_secret = secret(manifests)
    acl_file = render_acl(manifests, tmp_path)
    text = acl_file.read_text()
    assert redis_secret["REDIS_IMGQ_PASSWORD"] not in text, "hashes only"
    assert (acl_file.stat().st_mode & 0o077) == 0
    port = acl_redis(acl_file)
    url = urlparse(redis_secret["IMGQ_REDIS_URL"])

    def client(user: str, password: str, protocol: int = 2) -> Any:
        return redis_as(port, user, password, protocol)

    def refused(call: Callable[[], object]) -> bool:
        try:
            call()
        except redis.exceptions.NoPermissionError:
            return True
        except redis.ResponseError as exc:  # a script's call the ACL refused
            return "can't run this command" in str(exc)
        return False

    # Nobody without a password.
    assert b"NOAUTH" in _raw_ping(port)
    with pytest.raises(redis.AuthenticationError):
        client("default", "").ping()
    with pytest.raises(redis.AuthenticationError):
        client("imgq", redis_secret["REDIS_KEDA_PASSWORD"]).ping()

    # imgq, with the URL's credentials: what the API, Celery/kombu and imgq send.
    assert url.username and url.password
    imgq = client(url.username, url.password)
    assert imgq.ping()
    imgq.client_setname("imgq-test")
    assert "redis_version" in imgq.info()
    imgq.set("job:1", "{}", ex=60, nx=True)
    assert imgq.get("job:1") == b"{}"
    imgq.expire("job:1", 30)
    imgq.lpush("predict", "m1", "m2")
    imgq.lpush("train", "t1")
    assert imgq.brpop(["predict"], timeout=1) == (b"predict", b"m1")
    with imgq.pipeline() as pipe:
        pipe.zadd("unacked_index", {"tag": 1.0}).hset("unacked", "tag", "m").execute()
    assert imgq.zrangebyscore("unacked_index", 0, 2) == [b"tag"]
    assert imgq.register_script("return redis.call('get', KEYS[1])")(keys=["job:1"]) == b"{}"
    assert imgq.publish("imgq:models", "x") == 0
    subscriber = imgq.pubsub()
    subscriber.subscribe("imgq:models")
    subscriber.psubscribe("/0.celery.pidbox*")
    subscriber.close()
    assert client(url.username, url.password, protocol=3).ping()
    for dangerous in (
        imgq.flushall,
        imgq.flushdb,
        lambda: imgq.keys("*"),
        lambda: imgq.config_get("*"),
        lambda: imgq.config_set("maxmemory", "1"),
        lambda: imgq.execute_command("SHUTDOWN", "NOSAVE"),
        lambda: imgq.execute_command("ACL", "SETUSER", "keda", "+@all"),
        imgq.bgsave,
        imgq.client_list,
        lambda: imgq.execute_command("REPLICAOF", "127.0.0.1", "1"),
        lambda: imgq.execute_command("MODULE", "LIST"),
    ):
        assert refused(dangerous), dangerous

    # keda: connect, then read the queue lengths, nothing else.
    keda = client("keda", redis_secret["REDIS_KEDA_PASSWORD"], protocol=3)  # HELLO 3 AUTH ...
    assert keda.ping()
    assert [keda.eval(KEDA_SCRIPT, 1, queue) for queue in ("predict", "train", "webhooks")] == [
        1,
        1,
        0,
    ]
    for forbidden in (
        lambda: keda.eval(KEDA_SCRIPT, 1, "unacked"),
        lambda: keda.eval("return redis.call('del', KEYS[1])", 1, "predict"),
        lambda: keda.lpush("predict", "x"),
        lambda: keda.rpop("predict"),
        lambda: keda.get("job:1"),
        lambda: keda.publish("imgq:models", "x"),
        keda.flushall,
        keda.info,
    ):
        assert refused(forbidden), forbidden
    assert imgq.llen("predict") == 1


def test_a_rotated_redis_password_works_beside_the_old_one(
    tmp_path: Path, acl_redis: Callable[[Path], int]
) -> None:
    import redis

    manifests = rendered("cpu")
    old = secret(manifests)["REDIS_IMGQ_PASSWORD"]
    new = "a-new-password-" + "f" * 32
    port = acl_redis(
        render_acl(manifests, tmp_path, REDIS_IMGQ_PASSWORD=new, REDIS_IMGQ_PASSWORD_PREVIOUS=old)
    )
    for password in (new, old):
        assert redis_as(port, "imgq", password).ping()
    (tmp_path / "after").mkdir()
    port = acl_redis(render_acl(manifests, tmp_path / "after", REDIS_IMGQ_PASSWORD=new))
    assert redis_as(port, "imgq", new).ping()
    with pytest.raises(redis.AuthenticationError):
        redis_as(port, "imgq", old).ping()
    with pytest.raises(subprocess.CalledProcessError):  # an empty password is refused
        render_acl(manifests, tmp_path, REDIS_KEDA_PASSWORD="")


def test_the_redis_acl_script_passes_shellcheck(tmp_path: Path) -> None:
    redis_set = one(rendered("cpu"), "StatefulSet", "imgq-redis")
    (init,) = init_containers(redis_set)
    script = tmp_path / "acl.sh"
    script.write_text("#!/bin/sh\n" + init["args"][0])
    result = subprocess.run(
        [tool("shellcheck"), str(script)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_flower_is_not_deployed(overlay: str) -> None:
    for workload in workloads(rendered(overlay)):
        for container in containers(workload):
            assert "flower" not in [*container.get("command", []), *container.get("args", [])]


def test_renderer_generates_from_files_and_can_keep_the_name(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_bytes(b"[]\r\n")
    (tmp_path / "a.conf").write_text("x\n")
    pod_spec = {
        "containers": [{"name": "c", "image": "i"}],
        "volumes": [
            {"name": "a", "configMap": {"name": "conf"}},
            {"name": "b", "secret": {"secretName": "keys"}},
        ],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"template": {"spec": pod_spec}},
    }
    (tmp_path / "deployment.yaml").write_text(yaml.safe_dump(deployment))
    kustomization: Manifest = {
        "resources": ["deployment.yaml"],
        "configMapGenerator": [{"name": "conf", "files": ["a.conf"]}],
        "secretGenerator": [
            {
                "name": "keys",
                "files": ["k.json=keys.json"],
                "options": {"disableNameSuffixHash": True},
            }
        ],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    manifests = render(tmp_path)
    conf = generated(manifests, "ConfigMap", "conf")
    assert conf["data"] == {"a.conf": "x\n"}
    keys = one(manifests, "Secret", "keys")
    assert base64.b64decode(keys["data"]["k.json"]) == b"[]\r\n"
    (workload,) = workloads(manifests)
    assert volumes(workload)["a"]["configMap"]["name"] == conf["metadata"]["name"]
    assert volumes(workload)["b"]["secret"]["secretName"] == "keys"
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        output = subprocess.run(
            [kubectl, "kustomize", str(tmp_path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        assert sorted(yaml.safe_load_all(output), key=str) == sorted(manifests, key=str)
    kustomization["secretGenerator"][0]["options"] = {"immutable": True}
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    with pytest.raises(KustomizeError, match="unsupported options"):
        render(tmp_path)


# --- The images --------------------------------------------------------------------------------


def tool(name: str) -> str:
    """A command-line tool installed beside this Python (the dev extra), or on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: install the dev extra (pip install -e '.[dev]')")
    return found


@dataclass
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    arguments: str


def dockerfile_stages(path: Path) -> list[list[Instruction]]:
    """Instructions of each stage; the ARGs before the first FROM form stage zero."""
    stages: list[list[Instruction]] = [[]]
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()  # noqa: PLW2901
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), arguments.strip()))
    return stages


def env_of(stage: list[Instruction]) -> dict[str, str]:
    """The ENV values a stage sets."""
    values: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            values.update(re.findall(r"(\w+)=(\S+)", instruction.arguments))
    return values


DOCKERFILES = ["Dockerfile", "Dockerfile.gpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile: str) -> None:
    result = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "style", str(DOCKER / dockerfile)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python app.py\n")
    result = subprocess.run(
        [tool("hadolint"), str(bad)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = sorted(str(path) for path in DOCKER.glob("*.sh"))
    result = subprocess.run(
        [tool("shellcheck"), *scripts], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_bake_weights_run_as_non_root_and_check_health(dockerfile: str) -> None:
    preamble, *stages = dockerfile_stages(DOCKER / dockerfile)
    assert len(stages) >= 2, "multi-stage: build tools and caches stay out of the image"
    build, final = stages[0], stages[-1]
    weights_dir = env_of(final)["IMGQ_WEIGHTS_DIR"]
    (convert,) = [i.arguments for i in build if "load_lite_imagenet" in i.arguments]
    assert f"load_lite_imagenet('lite0', Path('{weights_dir}'))" in convert
    # The converted file is written 0600 by root; the runtime user must be able to read it.
    assert f"chmod -R a+rX {weights_dir}" in convert
    assert any(
        i.keyword == "COPY"
        and i.arguments.startswith("--from=build")
        and weights_dir.startswith(i.arguments.split()[1])
        for i in final
    )
    keywords = [i.keyword for i in final]
    user = next(i.arguments for i in reversed(final) if i.keyword == "USER").split(":")[0]
    args = dict(i.arguments.split("=", 1) for i in final if i.keyword == "ARG")
    assert int(re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], user)) > 0
    assert "HEALTHCHECK" in keywords
    assert final[keywords.index("ENTRYPOINT")].arguments == '["imgq-entrypoint"]'
    assert all(i.keyword == "ARG" for i in preamble)


def test_base_images_are_pinned_to_the_project_versions() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    tensorflow = next(d for d in project["dependencies"] if d.startswith("tensorflow-cpu=="))
    version = tensorflow.split("==")[1].split(";")[0].strip()
    cpu_base = re.search(
        r"ARG PYTHON_IMAGE=python:(\d+)\.(\d+)\.(\d+)-slim-\w+", (DOCKER / "Dockerfile").read_text()
    )
    assert cpu_base is not None
    assert (int(cpu_base[1]), int(cpu_base[2])) == (3, 11), "the Python the project is tested on"
    gpu_text = (DOCKER / "Dockerfile.gpu").read_text()
    assert f"ARG TF_GPU_IMAGE=tensorflow/tensorflow:{version}-gpu\n" in gpu_text
    assert f"'tensorflow=={version}'" in gpu_text


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_build_context_admits_everything_the_image_copies(dockerfile: str) -> None:
    admitted = {
        line[1:].rstrip("/")
        for line in (DOCKER / f"{dockerfile}.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for stage in dockerfile_stages(DOCKER / dockerfile)[1:]:
        for instruction in stage:
            if instruction.keyword == "COPY" and "--from=" not in instruction.arguments:
                *sources, _ = [a for a in instruction.arguments.split() if not a.startswith("--")]
                assert set(sources) <= admitted, sources


def entrypoint_argv(role_name: str, env: dict[str, str]) -> list[str]:
    """The command the entrypoint would exec for a role, with these variables."""
    completed = subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), role_name],
        env={"PATH": os.environ["PATH"], "IMGQ_ENTRYPOINT_DRY_RUN": "1", **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return completed.stdout.splitlines()


def _settings_cases() -> Iterator[tuple[dict[str, str], Settings]]:
    yield {}, settings_from({"IMGQ_API_BIND": "0.0.0.0:8000"})  # the image's defaults
    settings = config(rendered("gpu"))
    yield settings, settings_from(settings)


def test_entrypoint_runs_the_command_lines_of_the_local_run() -> None:
    for env, settings in _settings_cases():
        assert entrypoint_argv("api", env) == ["python3", *api_argv(settings)[1:]]
        for role_name, argv in (
            ("predict-worker", predict_worker_argv(settings)),
            ("train-worker", train_worker_argv(settings)),
            ("webhooks-worker", webhooks_worker_argv(settings)),
        ):
            assert entrypoint_argv(role_name, env) == ["python3", *argv[1:]]
    assert entrypoint_argv("flower", {}) == [
        "python3",
        "-m",
        "celery",
        "-A",
        "workers.webhooks_worker",
        "flower",
        "--port=5555",
    ]
    completed = subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), "echo", "anything else"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert completed.stdout == "anything else\n"


# --- docker compose ------------------------------------------------------------------------------


def compose_value(value: object) -> str:
    """A compose value with ``${NAME:-default}`` replaced by its default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def test_compose_runs_redis_with_aof_and_every_role_from_one_image() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    redis = services["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    (data,) = [v for v in redis["volumes"] if v.endswith(":/data")]
    assert data.split(":")[0] in compose["volumes"]
    roles = {"api", "predict-worker", "train-worker", "webhooks-worker", "flower"}
    assert {name: services[name]["command"] for name in roles} == {name: [name] for name in roles}
    for name in roles:
        assert services[name]["image"] == "imgq:0.1.0"
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["predict-worker-gpu"]["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    grace = re.fullmatch(r"(\d+)m", services["train-worker"]["stop_grace_period"])
    assert grace is not None
    time_limit_s = int(compose_value(compose["x-imgq-env"]["IMGQ_TRAIN_TIME_LIMIT_S"]))
    assert int(grace[1]) * 60 >= time_limit_s + 60, "a running fine-tune must finish on stop"


def test_compose_settings_are_the_deployed_settings() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    env = {key: compose_value(value) for key, value in compose["x-imgq-env"].items()}
    settings_from(env)
    assert urlparse(env["IMGQ_REDIS_URL"]).hostname in compose["services"]
    deployed = config(rendered("cpu"))
    assert {k: v for k, v in env.items() if k in deployed} == {
        k: v for k, v in deployed.items() if k in env
    }
    for setting, _, deployments in SHARED_STORES:
        for name in deployments:
            volumes = compose["services"][name.removeprefix("imgq-")]["volumes"]
            assert any(v.endswith(":" + env[setting]) for v in volumes), (name, setting)


def test_compose_starts_flower_only_when_asked_and_only_for_this_machine() -> None:
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    flower = services["flower"]
    assert flower["profiles"] == ["flower"], "Flower can revoke tasks and stop workers: opt-in"
    assert all(str(port).startswith("127.0.0.1:") for port in flower["ports"])
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] is None  # passed on only when set
    # The default `up` starts everything else.
    default = {name for name, service in services.items() if "profiles" not in service}
    assert default == {"redis", "api", "predict-worker", "train-worker", "webhooks-worker"}


def test_the_example_alert_rules_use_only_series_the_api_exports() -> None:
    from api.metrics import MonitoringCollector

    rules = yaml.safe_load((REPO / "deploy" / "alerts" / "imgq-rules.yaml").read_text())
    exported = set(
        re.findall(
            r'"(imgq_[a-z_]+)"',
            Path(sys.modules[MonitoringCollector.__module__].__file__ or "").read_text(),
        )
    )
    used = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in re.findall(r"\b(imgq_[a-z_]+)", rule["expr"])
    }
    assert used and used <= exported, used - exported
    assert all(
        rule["labels"]["severity"] and rule["for"] for g in rules["groups"] for rule in g["rules"]
    )


REQUIRED_EGRESS_EXCEPTIONS = {
    "0.0.0.0/0": {
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
    },
    "::/0": {"fc00::/7", "fe80::/10", "::1/128"},
}
"""Ranges the webhooks pods must never reach: private, link-local (metadata), CGNAT, loopback."""


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_webhooks_pods_reach_only_dns_redis_and_public_addresses(overlay: str) -> None:
    import ipaddress

    from imgq.webhooks.callback_urls import refusal

    manifests = rendered(overlay)
    policy = one(manifests, "NetworkPolicy", "imgq-webhooks-egress")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Egress"]
    selected = [w for w in workloads(manifests) if selects(spec["podSelector"], template_labels(w))]
    assert [w["metadata"]["name"] for w in selected] == ["imgq-webhooks-worker"]
    redis = one(manifests, "StatefulSet", "imgq-redis")
    blocks: dict[str, set[str]] = {}
    for rule in spec["egress"]:
        ports = {(port["protocol"], port["port"]) for port in rule["ports"]}
        peers = rule["to"]
        if all("ipBlock" in peer for peer in peers):
            assert ports == {("TCP", 80), ("TCP", 443)}
            for peer in peers:
                cidr, excepted = peer["ipBlock"]["cidr"], peer["ipBlock"].get("except", [])
                network = ipaddress.ip_network(cidr)
                assert all(ipaddress.ip_network(e).subnet_of(network) for e in excepted)  # type: ignore[arg-type]
                # Everything excepted is also refused by the callback URL check.
                assert all(refusal(ipaddress.ip_network(e).network_address) for e in excepted)
                blocks[cidr] = set(excepted)
        elif ports == {("TCP", 6379)}:
            assert all(selects(peer["podSelector"], template_labels(redis)) for peer in peers)
            assert not any("namespaceSelector" in peer for peer in peers)
        elif ports == {("TCP", SENTINEL_PORT)} and overlay == "sentinel":
            sentinels = one(manifests, "StatefulSet", "imgq-redis-sentinel")
            assert all(selects(peer["podSelector"], template_labels(sentinels)) for peer in peers)
            assert not any("namespaceSelector" in peer for peer in peers)
        else:
            assert ports == {("UDP", 53), ("TCP", 53)}, rule
    assert set(blocks) == set(REQUIRED_EGRESS_EXCEPTIONS)
    for cidr, required in REQUIRED_EGRESS_EXCEPTIONS.items():
        assert required <= blocks[cidr], (cidr, required - blocks[cidr])


# --- Redis under Sentinel (overlays/sentinel) ----------------------------------------------------

REDIS_PORT = 6379
"""The Redis servers' port in every overlay."""


def pod_dns_names(manifests: list[Manifest], statefulset: str) -> list[str]:
    """Fully qualified DNS names of a StatefulSet's pods (what pods in other namespaces use)."""
    workload = one(manifests, "StatefulSet", statefulset)
    service = one(manifests, "Service", workload["spec"]["serviceName"])
    # Headless, and names before readiness: a replica resolves a master still loading its AOF.
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    domain = f"{service['metadata']['name']}.{workload['metadata']['namespace']}.svc.cluster.local"
    return [f"{statefulset}-{i}.{domain}" for i in range(workload["spec"]["replicas"])]


def sentinel_target(manifests: list[Manifest]) -> SentinelTarget:
    """The sentinels and master of the deployed IMGQ_REDIS_URL (parsed as imgq parses it)."""
    target = parse_sentinel_url(secret(manifests)["IMGQ_REDIS_URL"])
    assert target is not None, "the Sentinel overlay's IMGQ_REDIS_URL is a sentinel:// URL"
    return target


def test_sentinel_overlay_names_the_sentinel_pods_everywhere() -> None:
    manifests = rendered("sentinel")
    service = one(manifests, "Service", "imgq-redis-sentinel")
    assert [p["port"] for p in service["spec"]["ports"]] == [SENTINEL_PORT]
    sentinels = [
        f"{host}:{SENTINEL_PORT}" for host in pod_dns_names(manifests, service["metadata"]["name"])
    ]
    servers = pod_dns_names(manifests, "imgq-redis")
    assert len(sentinels) == 3 and len(servers) == 3, "quorum 2 of 3; a master and two replicas"
    target = sentinel_target(manifests)
    assert [f"{host}:{port}" for host, port in target.sentinels] == sentinels
    scaled = [m for m in manifests if m["kind"] == "ScaledObject"]
    assert scaled
    for scaled_object in scaled:
        for trigger in scaled_object["spec"]["triggers"]:
            assert trigger["type"] == "redis-sentinel", scaled_object["metadata"]["name"]
            assert trigger["metadata"]["addresses"].split(",") == sentinels
            assert trigger["metadata"]["sentinelMaster"] == target.master_name
    # Both init scripts ask the same sentinels about the same master, and start from pod 0.
    server_init = init_containers(one(manifests, "StatefulSet", "imgq-redis"))[0]
    sentinel_init = init_containers(one(manifests, "StatefulSet", "imgq-redis-sentinel"))[0]
    for init in (server_init, sentinel_init):
        assert env_var(init, "SENTINELS")["value"].split() == sentinels
        assert env_var(init, "MASTER_NAME")["value"] == target.master_name
        assert env_var(init, "FIRST_MASTER")["value"] == servers[0]
    assert env_var(server_init, "REDIS_DOMAIN")["value"] == servers[0].partition(".")[2]
    assert (
        env_var(sentinel_init, "SENTINEL_DOMAIN")["value"]
        == (sentinels[0].partition(".")[2].rpartition(":")[0])
    )
    settings = settings_from(
        {**config(manifests), "IMGQ_REDIS_URL": secret(manifests)["IMGQ_REDIS_URL"]}
    )
    assert 1 <= settings.redis_min_replicas < len(servers), "a 202 waits for a replica that exists"


def run_init_script(
    init: Manifest, manifests: list[Manifest], directory: Path, hostname: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run an init container's script here as pod ``hostname``, its files under ``directory``."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "hostname").write_text(f"#!/bin/sh\necho {hostname}\n")
    (bin_dir / "hostname").chmod(0o755)
    redis_secret = secret(manifests)
    variables = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for variable in init["env"]:
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["key"] in redis_secret:
            variables[variable["name"]] = redis_secret[ref["key"]]
        elif "value" in variable:
            variables[variable["name"]] = variable["value"]
    return subprocess.run(
        ["sh", "-c", init["args"][0]],
        env={**variables, **env},
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sentinel_init_scripts_make_pod_0_master_and_replicate_with_the_acl_users(
    tmp_path: Path,
) -> None:
    from imgq.local.supervisor import free_port, wait_until

    manifests = rendered("sentinel")
    redis_secret = secret(manifests)
    redis_set = one(manifests, "StatefulSet", "imgq-redis")
    (init,) = init_containers(redis_set)
    servers = pod_dns_names(manifests, "imgq-redis")
    nobody = f"127.0.0.1:{free_port()}"  # no sentinel answers: the first start
    files: dict[str, Path] = {}
    for pod in ("imgq-redis-0", "imgq-redis-1"):
        directory = tmp_path / pod
        template = directory / "users.acl.template"
        directory.mkdir()
        template.write_text(acl_template(manifests))
        run_init_script(
            init,
            manifests,
            directory,
            pod,
            SENTINELS=nobody,
            ACL_TEMPLATE=str(template),
            ACL_FILE=str(directory / "users.acl"),
            REDIS_CONF=str(directory / "redis.conf"),
        )
        files[pod] = directory
    master_conf = (files["imgq-redis-0"] / "redis.conf").read_text()
    replica_conf = (files["imgq-redis-1"] / "redis.conf").read_text()
    assert "replicaof" not in master_conf
    assert f"replicaof {servers[0]} {REDIS_PORT}\n" in replica_conf
    assert f"replica-announce-ip {servers[1]}\n" in replica_conf
    assert "masteruser replica\n" in replica_conf
    for secret_value in redis_secret.values():
        assert secret_value not in (files["imgq-redis-0"] / "users.acl").read_text()

    # The real servers, on this machine: the rendered files, addresses made local.
    import redis

    started: list[subprocess.Popen[bytes]] = []
    try:
        ports = {}
        for pod, replica_of in (("imgq-redis-0", None), ("imgq-redis-1", "imgq-redis-0")):
            ports[pod] = free_port()
            argv = [tool("redis-server"), str(files[pod] / "redis.conf")]
            argv += ["--aclfile", str(files[pod] / "users.acl"), "--port", str(ports[pod])]
            argv += [
                "--bind",
                "127.0.0.1",
                "--dir",
                str(files[pod]),
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            argv += ["--replica-announce-ip", "127.0.0.1"]
            if replica_of is not None:
                argv += ["--replicaof", "127.0.0.1", str(ports[replica_of])]
            started.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
            port = ports[pod]
            wait_until(lambda: b"NOAUTH" in _raw_ping(port), 10, "redis-server")  # noqa: B023
        # imgq logs in as the Sentinel URL lets it: a password, no user name.
        imgq = redis.Redis(port=ports["imgq-redis-0"], password=sentinel_target(manifests).password)
        imgq.lpush("predict", "m1")
        assert imgq.wait(1, 5000) == 1, "the replica logged in as `replica` and caught up"
        replica = redis_as(ports["imgq-redis-1"], "keda", redis_secret["REDIS_KEDA_PASSWORD"])
        assert replica.eval(KEDA_SCRIPT, 1, "predict") == 1
        watcher = redis_as(
            ports["imgq-redis-0"], "sentinel", redis_secret["REDIS_SENTINEL_PASSWORD"]
        )
        assert watcher.ping() and "role" in watcher.info("replication")
        with pytest.raises(redis.exceptions.NoPermissionError):
            watcher.get("predict")
        with pytest.raises(redis.exceptions.NoPermissionError):
            redis_as(ports["imgq-redis-0"], "replica", redis_secret["REDIS_REPLICA_PASSWORD"]).get(
                "x"
            )
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=10)

    # A sentinel's first start: it monitors pod 0 by name, and logs in as `sentinel`.
    sentinel_set = one(manifests, "StatefulSet", "imgq-redis-sentinel")
    (sentinel_init,) = init_containers(sentinel_set)
    conf = tmp_path / "sentinel.conf"
    run_init_script(
        sentinel_init,
        manifests,
        tmp_path / "s",
        "imgq-redis-sentinel-1",
        SENTINELS=nobody,
        SENTINEL_CONF=str(conf),
    )
    lines = conf.read_text().splitlines()
    master_name = sentinel_target(manifests).master_name
    assert lines.index("sentinel resolve-hostnames yes") < lines.index(
        f"sentinel monitor {master_name} {servers[0]} {REDIS_PORT} 2"
    )
    assert "sentinel announce-hostnames yes" in lines
    assert f"sentinel auth-user {master_name} sentinel" in lines
    assert f"sentinel auth-pass {master_name} {redis_secret['REDIS_SENTINEL_PASSWORD']}" in lines
    assert any(
        line.startswith(f"sentinel down-after-milliseconds {master_name} ") for line in lines
    )
    assert any(line.startswith(f"sentinel failover-timeout {master_name} ") for line in lines)
    (server,) = main_containers(sentinel_set)
    assert server["args"] == [env_var(sentinel_init, "SENTINEL_CONF")["value"], "--sentinel"]


def test_the_sentinel_scripts_pass_shellcheck(tmp_path: Path) -> None:
    manifests = rendered("sentinel")
    scripts = []
    for name in ("imgq-redis", "imgq-redis-sentinel"):
        (init,) = init_containers(one(manifests, "StatefulSet", name))
        script = tmp_path / f"{name}.sh"
        script.write_text("#!/bin/sh\n" + init["args"][0])
        scripts.append(str(script))
    result = subprocess.run(
        [tool("shellcheck"), *scripts], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
