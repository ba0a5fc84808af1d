"""Signed webhooks against a real HTTP receiver, delivered by a real webhooks worker."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from imgq.local.supervisor import REPO, Service, free_port
from tests.support.http import credentials, http, wait_for_job
from tests.support.metrics import scrape_url
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.e2e


def readme_verifier() -> Any:
    """The verification snippet from the README, run as written."""
    text = (REPO / "README.md").read_text()
    snippet = re.search(r"```python\n(# verify an imgq webhook.*?)```", text, re.S)
    assert snippet, "README lost its webhook verification snippet"
    namespace: dict[str, Any] = {}
    exec(snippet.group(1), namespace)
    return namespace["verify"]


def _submit(api_server: str, image: bytes, callback: str) -> str:
    body = {"images": [base64.b64encode(image).decode()], "callback_url": callback}
    response = http.post(f"{api_server}/jobs/predict", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _webhook_settled(api_server: str, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        webhook = http.get(f"{api_server}/jobs/{job_id}").json()["webhook"]
        if webhook and webhook["state"] in ("delivered", "failed"):
            return dict(webhook)
        time.sleep(0.1)
    raise AssertionError(f"webhook of {job_id} never settled")


def test_receiver_failing_twice_gets_three_signed_attempts_and_a_delivery(
    api_server: str,
    predict_worker: Service,
    webhooks_worker: Service,
    httpserver: HTTPServer,
    cat_jpeg: bytes,
) -> None:
    receiver = Receiver([500, 500, 200])
    httpserver.expect_request("/hook", method="POST").respond_with_handler(receiver)
    job_id = _submit(api_server, cat_jpeg, httpserver.url_for("/hook"))
    assert wait_for_job(api_server, job_id)["status"] == "succeeded"
    webhook = _webhook_settled(api_server, job_id)

    assert webhook["state"] == "delivered"
    assert [a.get("status_code") for a in webhook["attempts"]] == [500, 500, 200]
    assert all(a["duration_ms"] >= 0 and a["at"] for a in webhook["attempts"])
    verify = readme_verifier()
    event_ids = set()
    for headers, body in receiver.requests:
        assert verify(credentials.webhook_secrets["admin"], headers, body)
        assert not verify("wrong secret", headers, body)
        event_ids.add(headers["Imgq-Event-Id"])
    assert event_ids == {f"{job_id}.succeeded"}  # one event, so receivers can deduplicate
    assert b'"status": "succeeded"' in receiver.requests[-1][1]
    attempts = scrape_url(f"{webhooks_worker.url}/metrics")
    assert attempts['imgq_webhook_attempts_total{outcome="retry"}'] >= 2
    assert attempts['imgq_webhook_attempts_total{outcome="delivered"}'] >= 1


def test_receiver_that_never_answers_2xx_ends_failed_and_can_be_redelivered(
    api_server: str,
    predict_worker: Service,
    webhooks_worker: Service,
    httpserver: HTTPServer,
    cat_jpeg: bytes,
) -> None:
    receiver = Receiver([503, 503, 503, 200])
    httpserver.expect_request("/down", method="POST").respond_with_handler(receiver)
    job_id = _submit(api_server, cat_jpeg, httpserver.url_for("/down"))
    webhook = _webhook_settled(api_server, job_id)
    assert webhook["state"] == "failed"
    assert [a["status_code"] for a in webhook["attempts"]] == [503, 503, 503]
    assert wait_for_job(api_server, job_id)["result"]["predictions"]  # the result is intact

    again = http.post(f"{api_server}/jobs/{job_id}/webhook/redeliver")
    assert again.status_code == 202
    time.sleep(0.2)
    webhook = _webhook_settled(api_server, job_id)
    assert webhook["state"] == "delivered"
    assert [a["status_code"] for a in webhook["attempts"]] == [503, 503, 503, 200]


def test_client_errors_are_not_retried(
    api_server: str,
    predict_worker: Service,
    webhooks_worker: Service,
    httpserver: HTTPServer,
    cat_jpeg: bytes,
) -> None:
    receiver = Receiver([410, 200])
    httpserver.expect_request("/gone", method="POST").respond_with_handler(receiver)
    job_id = _submit(api_server, cat_jpeg, httpserver.url_for("/gone"))
    webhook = _webhook_settled(api_server, job_id)
    assert webhook["state"] == "failed"
    assert [a["status_code"] for a in webhook["attempts"]] == [410]


def test_unreachable_receiver_is_retried_then_failed(
    api_server: str, predict_worker: Service, webhooks_worker: Service, cat_jpeg: bytes
) -> None:
    job_id = _submit(api_server, cat_jpeg, f"http://127.0.0.1:{free_port()}/nobody")
    webhook = _webhook_settled(api_server, job_id)
    assert webhook["state"] == "failed"
    assert len(webhook["attempts"]) == 3
    assert all("error" in attempt for attempt in webhook["attempts"])


def test_signature_scheme_matches_the_documentation() -> None:
    from imgq.webhooks.signing import sign

    body, timestamp = b'{"id": "x"}', "1700000000"
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("s3cret", timestamp, body) == f"v1={expected}"
