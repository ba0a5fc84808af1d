"""API keys, per-client isolation, idempotency keys, listing and callback-URL checks."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest
import requests
from flask.testing import FlaskClient

from api.app import create_app
from imgq.local.supervisor import Service
from imgq.settings import Settings
from tests.support.http import credentials, http, wait_for_job
from tests.support.images import jpeg_bytes

SMALL = base64.b64encode(jpeg_bytes(np.full((24, 24, 3), 90, np.uint8))).decode()


def _submit(as_client: str, base: str, **extra: object) -> requests.Response:
    return http.as_client(as_client).post(f"{base}/jobs/predict", json={"images": [SMALL], **extra})


@pytest.mark.e2e
def test_missing_or_wrong_keys_are_401_and_probes_stay_open(api_server: str) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        response = requests.get(f"{api_server}/jobs", headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/healthz", "/readyz", "/metrics"):
        assert requests.get(f"{api_server}{path}", timeout=5).status_code == 200


@pytest.mark.e2e
def test_clients_cannot_read_list_or_cancel_each_others_jobs(
    api_server: str, predict_worker: Service
) -> None:
    alice, bob = http.as_client("alice"), http.as_client("bob")
    job_id = _submit("alice", api_server).json()["id"]
    assert wait_for_job(api_server, job_id)["status"] == "succeeded"
    assert alice.get(f"{api_server}/jobs/{job_id}").status_code == 200
    for response in (
        bob.get(f"{api_server}/jobs/{job_id}"),
        bob.delete(f"{api_server}/jobs/{job_id}"),
        bob.post(f"{api_server}/jobs/{job_id}/webhook/redeliver"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "job_not_found"
    assert job_id in [j["id"] for j in alice.get(f"{api_server}/jobs").json()["jobs"]]
    assert job_id not in [j["id"] for j in bob.get(f"{api_server}/jobs").json()["jobs"]]
    assert job_id in [j["id"] for j in http.get(f"{api_server}/jobs?limit=100").json()["jobs"]]


@pytest.mark.e2e
def test_only_admins_activate_model_versions(api_server: str) -> None:
    path = f"{api_server}/models/imagenet/versions/1/activate"
    refused = http.as_client("alice").post(path)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert http.post(path).status_code == 200


@pytest.mark.e2e
def test_idempotency_key_returns_the_same_job_and_refuses_another_body(
    api_server: str, predict_worker: Service
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = http.as_client("alice").post(
        f"{api_server}/jobs/predict", json={"images": [SMALL]}, headers=headers
    )
    assert first.status_code == 202
    again = http.as_client("alice").post(
        f"{api_server}/jobs/predict", json={"images": [SMALL]}, headers=headers
    )
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = http.as_client("alice").post(
        f"{api_server}/jobs/predict", json={"images": [SMALL], "top_k": 2}, headers=headers
    )
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"
    bobs = http.as_client("bob").post(
        f"{api_server}/jobs/predict", json={"images": [SMALL]}, headers=headers
    )
    assert bobs.status_code == 202 and bobs.json()["id"] != first.json()["id"]  # per client


@pytest.mark.e2e
def test_listing_is_newest_first_filtered_and_paginated(
    api_server: str, predict_worker: Service
) -> None:
    bob = http.as_client("bob")
    created = [_submit("bob", api_server).json()["id"] for _ in range(5)]
    for job_id in created:
        wait_for_job(api_server, job_id)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 2, "type": "predict", "status": "succeeded"}
        if cursor:
            params["cursor"] = cursor
        page = bob.get(f"{api_server}/jobs", params=params).json()
        assert len(page["jobs"]) <= 2
        seen.extend(job["id"] for job in page["jobs"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen[: len(created)] == list(reversed(created))
    assert len(seen) == len(set(seen))
    assert bob.get(f"{api_server}/jobs", params={"status": "queued"}).json()["jobs"] == []
    assert bob.get(f"{api_server}/jobs", params={"limit": 0}).status_code == 422


@pytest.fixture
def strict_client(settings: Settings) -> Iterator[FlaskClient]:
    app = create_app(settings.model_copy(update={"webhook_allow_private": False}))
    with app.test_client() as client:
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {credentials.keys['alice']}"
        yield client


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/hook",
        "http://127.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://localhost:8080/x",
        "http://10.1.2.3/hook",
        "http://[::ffff:192.168.0.1]/hook",
        "http:///nohost",
        "gopher://example.com",
    ],
)
def test_callback_urls_to_internal_addresses_are_refused(
    strict_client: FlaskClient, url: str
) -> None:
    response = strict_client.post("/jobs/predict", json={"images": [SMALL], "callback_url": url})
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["code"] == "invalid_callback_url"


def test_hostname_resolving_to_a_private_address_is_refused(
    strict_client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    real = socket.getaddrinfo

    def private_answer(host: str, port: int, *args: object, **kwargs: object) -> list[object]:
        if host != "hooks.example.com":  # Redis, for the caller's rate limit
            return list(real(host, port, *args, **kwargs))  # type: ignore[arg-type]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]

    # Narrow stand-in for DNS (none is reachable here): the name answers with a private address.
    monkeypatch.setattr(socket, "getaddrinfo", private_answer)
    response = strict_client.post(
        "/jobs/predict", json={"images": [SMALL], "callback_url": "https://hooks.example.com/imgq"}
    )
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_callback_url"
    assert error["details"]["addresses"] == ["10.0.0.7"]
