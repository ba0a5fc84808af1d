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
from standardwebhooks import Webhook as StandardWebhook
from svix.webhooks import Webhook as SvixWebhook

from imgq.api_keys import new_webhook_secret
from imgq.local.supervisor import REPO, Service, free_port
from tests.support.http import credentials, http, wait_for_job
from tests.support.metrics import scrape_url
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.e2e


def readme_function(first_line: str, name: str) -> Any:
    """Function ``name`` of the README's Python block that starts with ``first_line``, run as
    written."""
    text = (REPO / "README.md").read_text()
    snippet = re.search(rf"```python\n({re.escape(first_line)}.*?)```", text, re.S)
    assert snippet, f"README lost its snippet {first_line!r}"
    namespace: dict[str, Any] = {}
    exec(snippet.group(1), namespace)
    return namespace[name]


def readme_verifier() -> Any:
    """The README's verifier of the ``Imgq-*`` headers."""
    return readme_function("# verify an imgq webhook", "verify")


def readme_standard_verifiers() -> list[Any]:
    """The README's two verifiers of the Standard Webhooks headers: with the
    ``standardwebhooks`` package, and by hand."""
    return [
        readme_function("# verify a Standard Webhooks delivery with the", "verify_with_library"),
        readme_function("# verify a Standard Webhooks delivery by hand", "verify_standard"),
    ]


def _submit(api_server: str, image: bytes, callback: str) -> str:
    body = {"images": [base64.b64encode(image).decode()], "callback_url": callback}
    response = http.post(f"{api_server}/jobs/predict", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _webhook_settled(api_server: str, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        webhook = http.get(f"{api_server}/jobs/{job_id}").json()["webhook"]
        if webhook and webhook["state"] in ("delivered", "failed", "disabled"):
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
    secret = credentials.webhook_secrets["admin"]
    event_ids, webhook_ids = set(), set()
    for headers, body in receiver.requests:
        assert verify(secret, headers, body)
        assert not verify("wrong secret", headers, body)
        event_ids.add(headers["Imgq-Event-Id"])
        # The same delivery, signed the Standard Webhooks way too, beside the Imgq-* headers.
        assert headers["Webhook-Timestamp"] == headers["Imgq-Timestamp"]
        StandardWebhook(secret).verify(body, headers)
        SvixWebhook(secret).verify(body, headers)
        for verify_standard in readme_standard_verifiers():
            assert verify_standard(secret, headers, body)
            assert not verify_standard(new_webhook_secret(), headers, body)
        webhook_ids.add(headers["Webhook-Id"])
    assert event_ids == {f"{job_id}.succeeded"}  # one event, so receivers can deduplicate
    assert webhook_ids == {f"job_{job_id}"} == {webhook["webhook_id"]}
    assert all(a["standard_webhooks"] == {"sent": True} for a in webhook["attempts"])
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
    receiver = Receiver([404, 200])
    httpserver.expect_request("/missing", method="POST").respond_with_handler(receiver)
    job_id = _submit(api_server, cat_jpeg, httpserver.url_for("/missing"))
    webhook = _webhook_settled(api_server, job_id)
    assert webhook["state"] == "failed"
    assert [a["status_code"] for a in webhook["attempts"]] == [404]
    assert webhook["disabled_reason"] is None


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
