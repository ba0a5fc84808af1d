"""The smoke test both container stacks get (compose and ``kube play``), from outside them.

A ``Stack`` knows where its API is and which container plays each role; the functions here
drive it the way a client and an operator would: a photo classified with the baked-in weights,
a tiny fine-tune published as a new version that the prediction worker then serves, a signed
webhook received on this host, ``/metrics`` of every imgq container, ``podman healthcheck
run`` of each, and a prediction worker SIGKILLed while jobs stream in, after which every
accepted job must still succeed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from imgq.local.supervisor import wait_until
from tests.containers.podman import Podman
from tests.support.datasets import make_dataset_zip, submit_finetune
from tests.support.http import Http

CAT_CLASSES = {281, 282, 283, 284, 285}
"""ImageNet indices of domestic cats (scikit-image's chelsea is a tabby)."""
IMGQ_ROLES = ["api", "predict-worker", "train-worker", "webhooks-worker"]
ENDED = ("succeeded", "failed", "canceled")
TINY_FINETUNE = {"epochs": 1, "fine_tune_epochs": 0, "batch_size": 8}
"""One epoch of the head on 8 images a class: a new version in seconds, not a good model."""


class Stack:
    """A running set of imgq containers; subclasses start and remove them."""

    kind = "stack"

    def __init__(self, podman: Podman) -> None:
        self.podman = podman
        self.api = ""
        """The API's base URL, as this host reaches it."""
        self.containers: dict[str, str] = {}
        """Container name by role (``api``, ``predict-worker``, ..., ``redis``)."""
        self.network = ""
        self.timings: dict[str, float] = {}

    def up(self) -> None:
        """Start the containers; fill in ``api``, ``containers`` and ``network``."""
        raise NotImplementedError

    def down(self) -> None:
        """Remove the containers and everything they made."""
        raise NotImplementedError

    def start(self, client: Http) -> None:
        """``up``, then wait until it is ready; ``timings`` get ``up_s`` and ``ready_s`` (from
        the start of ``up`` to the API ready and the prediction worker's model warm)."""
        started = time.monotonic()
        self.up()
        self.timings["up_s"] = time.monotonic() - started
        wait_ready(self, client)
        self.timings["ready_s"] = time.monotonic() - started

    def save_logs(self, directory: Path) -> None:
        """Each container's log into ``directory`` (for a failed test's report)."""
        for role, container in self.containers.items():
            result = self.podman.run("logs", container, check=False, timeout=60)
            (directory / f"{role}.log").write_text(result.stdout + result.stderr)

    def address(self, role: str) -> str:
        """The IP address of ``role``'s container on the stack's network."""
        details = self.podman.inspect("container", self.containers[role])
        networks: dict[str, Any] = details["NetworkSettings"]["Networks"]
        return str(networks[self.network]["IPAddress"])

    def metrics_url(self, role: str) -> str:
        """Where ``role``'s Prometheus endpoint answers this host."""
        if role == "api":
            return f"{self.api}/metrics"
        return f"http://{self.address(role)}:9100/metrics"

    def gateway(self) -> str:
        """This host's address on the stack's network (where containers reach the host)."""
        details = self.podman.inspect("network", self.network)
        subnets: list[dict[str, str]] = details["subnets"]
        return subnets[0]["gateway"]


def wait_for_job(client: Http, api: str, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    """Long-poll the job until it ends; its document."""
    document: dict[str, Any] = {}

    def ended() -> bool:
        nonlocal document
        answer = client.get(f"{api}/jobs/{job_id}", params={"wait": 5}, timeout=15)
        document = answer.json()
        return document["status"] in ENDED

    wait_until(ended, timeout_s, f"job {job_id}")
    return document


def predict(client: Http, api: str, image: bytes, **options: Any) -> dict[str, Any]:
    """One image through ``POST /jobs/predict``, waited for; the job's document."""
    body = {"images": [base64.b64encode(image).decode()], "top_k": 1, **options}
    response = client.post(f"{api}/jobs/predict", json=body, timeout=15)
    assert response.status_code == 202, response.text
    return wait_for_job(client, api, response.json()["id"])


def wait_ready(stack: Stack, client: Http, timeout_s: float = 300) -> float:
    """Wait until the API is ready and a prediction answers; the seconds it took."""
    started = time.monotonic()
    wait_until(
        lambda: requests.get(f"{stack.api}/readyz", timeout=3).status_code == 200,
        timeout_s,
        f"{stack.kind}: the API's /readyz",
    )
    wait_until(
        lambda: healthcheck(stack.podman, stack.containers["predict-worker"]),
        timeout_s - (time.monotonic() - started),
        f"{stack.kind}: the prediction worker's healthcheck",
    )
    return time.monotonic() - started


def healthcheck(podman: Podman, container: str) -> bool:
    """``podman healthcheck run``: whether the image's (or the probe's) check passes now."""
    result = podman.run("healthcheck", "run", container, check=False, timeout=60)
    return result.returncode == 0


def check_photo_classified(client: Http, api: str, photo: bytes) -> None:
    """A cat photo gets a cat label from the built-in model, version 1 (the baked weights)."""
    job = predict(client, api, photo, top_k=5)
    assert job["status"] == "succeeded", job
    assert job["result"]["model"] == "imagenet" and job["result"]["version"] == 1
    assert job["result"]["predictions"][0][0]["index"] in CAT_CLASSES, job["result"]


def check_finetune_served(client: Http, api: str, photo: bytes) -> float:
    """A tiny fine-tune becomes version 1 of ``pets``, active, and the prediction worker then
    answers with it; the seconds from submitting it to that answer."""
    started = time.monotonic()
    response = submit_finetune(
        api, make_dataset_zip(per_class=8), caller=client, model="pets", **TINY_FINETUNE
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(client, api, response.json()["id"], timeout_s=300)
    assert job["status"] == "succeeded", job
    assert job["result"]["model"] == "pets" and job["result"]["version"] == 1
    assert job["result"]["activated"], job["result"]
    served = predict(client, api, photo, model="pets")
    assert served["status"] == "succeeded", served
    assert served["result"]["model"] == "pets" and served["result"]["version"] == 1
    labels = {prediction["label"] for prediction in served["result"]["predictions"][0]}
    assert labels <= {"cat", "coffee", "rocket"}, served["result"]
    return time.monotonic() - started


def check_signed_webhook(
    client: Http,
    api: str,
    photo: bytes,
    callback: str,
    received: list[tuple[dict[str, str], bytes]],
) -> None:
    """A job with a ``callback_url`` on this host is delivered there, signed with the client's
    webhook secret (checked as the README's ``verify`` does)."""
    body = {"images": [base64.b64encode(photo).decode()], "callback_url": callback}
    response = client.post(f"{api}/jobs/predict", json=body, timeout=15)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    wait_until(lambda: bool(received), 60, "the webhook delivery on this host")
    headers, payload = received[0]
    assert headers["Imgq-Event-Id"] == f"{job_id}.succeeded"
    assert b'"status": "succeeded"' in payload
    secret = client.credentials.webhook_secrets[client.client]
    timestamp = headers["Imgq-Timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + payload, hashlib.sha256)
    assert f"v1={expected.hexdigest()}" in headers["Imgq-Signature"].split()
    assert abs(time.time() - int(timestamp)) < 300


def check_metrics(stack: Stack) -> dict[str, int]:
    """Every imgq container serves Prometheus text with imgq's own samples; their counts."""
    from prometheus_client.parser import text_string_to_metric_families

    counts = {}
    for role in IMGQ_ROLES:
        text = requests.get(stack.metrics_url(role), timeout=10).text
        names = [family.name for family in text_string_to_metric_families(text)]
        counts[role] = sum(name.startswith("imgq_") for name in names)
        assert counts[role] > 0, f"{role}: no imgq_ metric in {names}"
    return counts


def check_healthchecks(stack: Stack, timeout_s: float = 120) -> None:
    """``podman healthcheck run`` passes for every imgq container."""
    for role in IMGQ_ROLES:
        check = functools.partial(healthcheck, stack.podman, stack.containers[role])
        wait_until(check, timeout_s, f"{stack.kind}: {role} healthy")


@dataclass
class Stream:
    """Predict jobs submitted at a steady rate from one thread; the ids of the accepted ones."""

    client: Http
    api: str
    photo: bytes
    rate_per_s: float = 4.0
    accepted: list[str] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Stream:
        self._thread = threading.Thread(target=self._submit, daemon=True)
        self._thread.start()
        return self

    def _submit(self) -> None:
        body = {"images": [base64.b64encode(self.photo).decode()], "top_k": 1}
        while not self._stop.wait(1 / self.rate_per_s):
            try:
                response = self.client.post(f"{self.api}/jobs/predict", json=body, timeout=10)
            except requests.RequestException:
                self.refused.append(0)
                continue
            if response.status_code == 202:
                self.accepted.append(response.json()["id"])
            else:
                self.refused.append(response.status_code)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


def check_killed_worker_loses_nothing(
    stack: Stack, client: Http, photo: bytes, role: str = "predict-worker"
) -> dict[str, float]:
    """SIGKILL ``role``'s container (its first process) while jobs stream in; its restart
    policy brings it back and every accepted job succeeds. Returns the figures: jobs accepted
    and lost, seconds until the container ran again and until the last job ended."""
    container = stack.containers[role]
    restarts = _restart_count(stack.podman, container)
    with Stream(client, stack.api, photo) as stream:
        wait_until(lambda: len(stream.accepted) >= 8, 30, "jobs accepted before the kill")
        # From the host, as the OOM killer or a crash would: `podman kill` counts as a stop
        # by the user, after which podman (like Docker) does not apply the restart policy.
        os.kill(int(stack.podman.inspect("container", container)["State"]["Pid"]), signal.SIGKILL)
        killed = time.monotonic()
        wait_until(
            lambda: (
                _restart_count(stack.podman, container) > restarts
                and _running(stack.podman, container)
            ),
            60,
            f"{container} restarted by its restart policy",
        )
        restarted = time.monotonic() - killed
        time.sleep(3)  # jobs accepted while the worker loads its model again
    documents = [wait_for_job(client, stack.api, job_id, 180) for job_id in stream.accepted]
    lost = [d for d in documents if d["status"] != "succeeded"]
    assert not lost, lost[:3]
    assert not stream.refused, stream.refused
    return {
        "accepted": len(stream.accepted),
        "lost": len(lost),
        "restart_s": restarted,
        "all_done_s": time.monotonic() - killed,
    }


def _restart_count(podman: Podman, container: str) -> int:
    details = podman.inspect("container", container)
    return int(details.get("RestartCount", 0))


def _running(podman: Podman, container: str) -> bool:
    state: dict[str, Any] = podman.inspect("container", container)["State"]
    return bool(state["Running"])
