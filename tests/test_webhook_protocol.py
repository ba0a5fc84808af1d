"""Standard Webhooks through the real stack: a legacy secret and its rotation, ``Retry-After``
and ``410 Gone``, for job deliveries and model events, delivered by a real webhooks worker.

Deliveries verified with the ``standardwebhooks`` library, ``svix``'s verifier and the README's
own verifiers are in ``tests/test_webhooks.py``; the signing itself is unit-tested in
``tests/unit/test_standard_webhooks.py``, the ``Retry-After`` arithmetic in
``tests/unit/test_webhook_delivery_state.py``.
"""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import numpy as np
import pytest
import redis
from pytest_httpserver import HTTPServer
from standardwebhooks import Webhook as StandardWebhook

from imgq.api_keys import Role, locked_key_file, new_key, read_key_entries, write_key_entries
from imgq.local.supervisor import wait_until
from imgq.settings import Settings
from imgq.webhooks.delivery import Delivery
from imgq.webhooks.events import WebhookEvents
from imgq.webhooks.schedule import DeliveryStore
from imgq.webhooks.signing import signatures
from tests.support.http import Credentials, Http, credentials, http
from tests.support.images import jpeg_bytes
from tests.support.webhooks import Receiver
from tests.test_keys import admin
from tests.test_webhooks import readme_standard_verifiers, readme_verifier

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("predict_worker", "webhooks_worker")]

SMALL = base64.b64encode(jpeg_bytes(np.full((24, 24, 3), 90, np.uint8))).decode()
STANDARD_HEADERS = ("Webhook-Id", "Webhook-Timestamp", "Webhook-Signature")


def _submit(base: str, caller: Http, callback: str) -> str:
    response = caller.post(
        f"{base}/jobs/predict", json={"images": [SMALL], "callback_url": callback}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _settled(base: str, caller: Http, job_id: str) -> dict[str, Any]:
    webhook: dict[str, Any] = {}

    def ended() -> bool:
        nonlocal webhook
        webhook = caller.get(f"{base}/jobs/{job_id}").json()["webhook"] or {}
        return webhook.get("state") in ("delivered", "failed", "disabled")

    wait_until(ended, 30, f"the webhook of {job_id}")
    return webhook


@pytest.fixture
def legacy_client(settings: Settings) -> Iterator[Http]:
    """A client whose webhook secret is as the first keys release issued it (``whsec_`` and
    URL-safe base64 without padding), removed afterwards."""
    keys_file = settings.api_keys_file
    assert keys_file is not None
    client = f"legacy-{uuid.uuid4().hex[:8]}"
    key, stored = new_key(client, Role.CLIENT, "whsec_" + secrets.token_urlsafe(32))
    with locked_key_file(keys_file):
        write_key_entries(keys_file, [*read_key_entries(keys_file), stored.to_entry()])
    own = Credentials(keys={client: key}, webhook_secrets={client: stored.webhook_secret})
    yield Http(client, own)
    with locked_key_file(keys_file):
        entries = read_key_entries(keys_file)
        write_key_entries(keys_file, [e for e in entries if e["client"] != client])


def test_a_legacy_secret_signs_imgq_headers_only_until_it_is_rotated(
    api_server: str, settings: Settings, legacy_client: Http, httpserver: HTTPServer
) -> None:
    receiver = Receiver()
    httpserver.expect_request("/legacy", method="POST").respond_with_handler(receiver)
    legacy = legacy_client.credentials.webhook_secrets[legacy_client.client]
    wait_until(  # the API re-reads the keys file about once a second
        lambda: legacy_client.get(f"{api_server}/jobs", params={"limit": 1}).status_code == 200,
        10,
        "the new client's key",
    )
    first = _submit(api_server, legacy_client, httpserver.url_for("/legacy"))
    webhook = _settled(api_server, legacy_client, first)

    assert webhook["state"] == "delivered"  # loads and signs as before: never an error
    (headers, body), *_ = receiver.requests
    assert readme_verifier()(legacy, headers, body)
    assert not any(name in headers for name in STANDARD_HEADERS)
    standard = webhook["attempts"][0]["standard_webhooks"]
    assert standard["sent"] is False
    assert "not in the Standard Webhooks form" in standard["reason"]
    assert "rotate-webhook-secret" in standard["reason"]
    assert legacy.removeprefix("whsec_") not in str(webhook)

    assert settings.api_keys_file is not None
    rotated = admin(
        settings.api_keys_file, "rotate-webhook-secret", "--client", legacy_client.client
    )
    new = rotated["webhook_secret"]
    second = _submit(api_server, legacy_client, httpserver.url_for("/legacy"))
    webhook = _settled(api_server, legacy_client, second)

    headers, body = receiver.requests[-1]
    assert len(signatures(headers["Imgq-Signature"])) == 2  # Imgq-*: the new and the old secret
    assert readme_verifier()(legacy, headers, body) and readme_verifier()(new, headers, body)
    assert len(headers["Webhook-Signature"].split()) == 1  # webhook-*: the new one only
    StandardWebhook(new).verify(body, headers)
    assert all(verify(new, headers, body) for verify in readme_standard_verifiers())
    standard = webhook["attempts"][0]["standard_webhooks"]
    assert standard["sent"] is True and "previous webhook secret" in standard["reason"]


def test_retry_after_moves_the_next_attempt_later_but_not_past_the_schedule(
    api_server: str, httpserver: HTTPServer
) -> None:
    in_an_hour = format_datetime(datetime.fromtimestamp(time.time() + 3600, UTC), usegmt=True)
    receiver = Receiver(
        [429, 503, 200], headers=[{"Retry-After": in_an_hour}, {"Retry-After": "3600"}]
    )
    httpserver.expect_request("/busy", method="POST").respond_with_handler(receiver)
    job_id = _submit(api_server, http, httpserver.url_for("/busy"))
    webhook = _settled(api_server, http, job_id)

    # The session's schedule is 0, 0.3, 0.3 s: an hour is capped at the 0.6 s it has left, and
    # that one wait uses up both retries, so the 503 is the last attempt.
    assert webhook["state"] == "failed"
    first, second = webhook["attempts"]
    assert (first["status_code"], second["status_code"]) == (429, 503)
    assert 3590 <= first["retry_after_s"] <= 3600  # the HTTP date, in seconds
    assert second["retry_after_s"] == 3600
    assert 0.5 <= second["at"] - first["at"] < 30  # later than 0.3 s, nowhere near an hour
    assert len(receiver.requests) == 2


def test_410_disables_the_callback_and_a_redelivery_enables_it(
    api_server: str, httpserver: HTTPServer
) -> None:
    receiver = Receiver([410, 200])
    httpserver.expect_request("/gone", method="POST").respond_with_handler(receiver)
    job_id = _submit(api_server, http, httpserver.url_for("/gone"))
    webhook = _settled(api_server, http, job_id)

    assert webhook["state"] == "disabled"
    assert "410 Gone" in webhook["disabled_reason"]
    assert [a["status_code"] for a in webhook["attempts"]] == [410]
    assert webhook["next_attempt_at"] is None
    time.sleep(1.0)  # the schedule would have retried twice by now
    assert len(receiver.requests) == 1

    assert http.post(f"{api_server}/jobs/{job_id}/webhook/redeliver").status_code == 202
    wait_until(lambda: len(receiver.requests) == 2, 30, "the redelivery")
    webhook = _settled(api_server, http, job_id)
    assert webhook["state"] == "delivered" and webhook["disabled_reason"] is None
    assert [a["status_code"] for a in webhook["attempts"]] == [410, 200]
    ids = {headers["Webhook-Id"] for headers, _ in receiver.requests}
    assert ids == {f"job_{job_id}"}  # a redelivery is the same message


def test_a_model_event_is_signed_under_its_id_and_a_410_removes_the_models_callback(
    api_server: str, settings: Settings, redis_client: redis.Redis, httpserver: HTTPServer
) -> None:
    receiver = Receiver([410])
    httpserver.expect_request("/model-gone", method="POST").respond_with_handler(receiver)
    url = httpserver.url_for("/model-gone")
    model = settings.default_model
    patched = http.request("PATCH", f"{api_server}/models/{model}", json={"callback_url": url})
    assert patched.status_code == 200, patched.text
    try:
        _deliver_gone_model_event(api_server, settings, redis_client, receiver, url)
    finally:  # the session's built-in model keeps no callback, whatever happened
        if http.get(f"{api_server}/models/{model}").json()["callback_url"] is not None:
            http.request("PATCH", f"{api_server}/models/{model}", json={"callback_url": None})


def _deliver_gone_model_event(
    api_server: str, settings: Settings, redis_client: redis.Redis, receiver: Receiver, url: str
) -> None:
    model = settings.default_model
    owner = http.get(f"{api_server}/models/{model}").json()["owner"]
    # What a rollout step sends (imgq.model_events.publish), without a rollout to wait for.
    event_id = WebhookEvents(redis_client, settings.job_ttl_s).send(
        "model.retrain_started", "admin", url, {"model": model, "owner": owner}
    )
    deliveries = DeliveryStore(redis_client, settings.job_ttl_s)
    delivery: Delivery | None = None

    def disabled() -> bool:
        nonlocal delivery
        delivery = deliveries.load(event_id)
        return delivery is not None and delivery.state == "disabled"

    wait_until(disabled, 30, f"the delivery of {event_id}")
    assert delivery is not None
    (headers, body), *_ = receiver.requests
    assert headers["Webhook-Id"] == event_id == delivery.webhook_id  # evt_<hex>: no dot
    StandardWebhook(credentials.webhook_secrets["admin"]).verify(body, headers)
    assert "callback_url was removed" in str(delivery.disabled_reason)
    assert http.get(f"{api_server}/models/{model}").json()["callback_url"] is None
    events = http.get(f"{api_server}/models/{model}/events").json()["events"]
    gone = next(e for e in events if e["event"] == "settings_changed" and e["by"] == "system")
    assert gone["reason"] == "the callback URL answered 410 Gone"
    assert gone["details"] == {"callback_url": None, "event_id": event_id}
