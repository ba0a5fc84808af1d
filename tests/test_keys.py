"""Key management through the real stack: ``imgq-admin`` edits the session's keys file while the
API and the webhooks worker run, and neither is restarted.

Only throwaway clients made here are revoked or rotated; every entry the session's other tests
use keeps its key and secret (``imgq-admin`` rewrites the file with every other entry as it was).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from pytest_httpserver import HTTPServer

from imgq.api_keys import locked_key_file, read_key_entries, write_key_entries
from imgq.local.supervisor import wait_until
from imgq.settings import Settings
from imgq.webhooks.signing import signatures
from tests.support.http import credentials, http, wait_for_job
from tests.support.images import jpeg_bytes
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.e2e

SMALL = base64.b64encode(jpeg_bytes(np.full((24, 24, 3), 90, np.uint8))).decode()
REVOKED_WITHIN_S = 5.0
"""How soon the API must refuse a revoked key (it looks at the file about once a second)."""

PROPOSED_README_VERIFIER = """
```python
# verify an imgq webhook: secret is your client's webhook secret; headers, body as received
import hashlib, hmac, time


def verify(secret, headers, body, tolerance_s=300):
    timestamp = headers["Imgq-Timestamp"]
    signed = timestamp.encode() + b"." + body
    expected = "v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(timestamp)) <= tolerance_s
    # While a secret is rotated the header lists one signature per secret ("v1=<new> v1=<old>"):
    # accept any listed value; comparing the whole header would fail during a rotation.
    listed = headers["Imgq-Signature"].split()
    return fresh and any(hmac.compare_digest(expected, value) for value in listed)
```
"""
"""The README's verifier as it should read (a rotation lists two signatures)."""


def proposed_verifier() -> Any:
    """The verifier above, extracted and run as test_webhooks runs the README's."""
    snippet = re.search(
        r"```python\n(# verify an imgq webhook.*?)```", PROPOSED_README_VERIFIER, re.S
    )
    assert snippet
    namespace: dict[str, Any] = {}
    exec(snippet.group(1), namespace)
    return namespace["verify"]


def admin(keys_file: Path, *args: str) -> dict[str, Any]:
    """Run ``imgq-admin keys <args> --file <keys_file> --json``; its JSON report."""
    done = subprocess.run(
        [sys.executable, "-m", "imgq.admin", "keys", *args, "--file", str(keys_file), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.fixture
def keys_file(settings: Settings) -> Path:
    assert settings.api_keys_file is not None
    return settings.api_keys_file


@pytest.fixture
def throwaway(keys_file: Path) -> Iterator[dict[str, Any]]:
    """A new client (key and webhook secret) in the session's keys file, removed afterwards."""
    client = f"throwaway-{uuid.uuid4().hex[:8]}"
    before = {e["client"]: e for e in read_key_entries(keys_file)}
    created = admin(keys_file, "create", "--client", client)
    yield created
    with locked_key_file(keys_file):
        entries = read_key_entries(keys_file)
        write_key_entries(keys_file, [e for e in entries if e["client"] != client])
    after = {e["client"]: e for e in read_key_entries(keys_file)}
    assert after == before  # the session's own clients are exactly as they were


def _jobs_status(base: str, key: str) -> int:
    response = requests.get(
        f"{base}/jobs", headers={"Authorization": f"Bearer {key}"}, params={"limit": 1}, timeout=5
    )
    return response.status_code


def test_a_revoked_key_is_refused_within_seconds_without_a_restart(
    api_server: str, keys_file: Path, throwaway: dict[str, Any]
) -> None:
    key = throwaway["key"]
    # The new key works as soon as the API looked at the file again (about once a second).
    wait_until(lambda: _jobs_status(api_server, key) == 200, REVOKED_WITHIN_S, "the new key")

    revoked = admin(keys_file, "revoke", "--key-sha256", throwaway["key_sha256"][:16])
    assert [r["client"] for r in revoked["revoked"]] == [throwaway["client"]]
    started = time.monotonic()
    wait_until(lambda: _jobs_status(api_server, key) == 401, REVOKED_WITHIN_S, "the refusal")
    print(f"revoked key refused after {time.monotonic() - started:.2f}s")
    for _ in range(5):  # and stays refused, in every thread of the API
        assert _jobs_status(api_server, key) == 401
    for client in ("admin", "alice"):  # everyone else is unaffected
        assert _jobs_status(api_server, credentials.keys[client]) == 200


def _submit(base: str, key: str, callback: str) -> str:
    response = requests.post(
        f"{base}/jobs/predict",
        json={"images": [SMALL], "callback_url": callback},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _mac(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _webhook_settled(base: str, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
    webhook: dict[str, Any] = {}

    def settled() -> bool:
        nonlocal webhook
        webhook = http.get(f"{base}/jobs/{job_id}").json()["webhook"] or {}
        return webhook.get("state") in ("delivered", "failed")

    wait_until(settled, timeout_s, f"the webhook of {job_id}")
    return webhook


@pytest.mark.usefixtures("predict_worker", "webhooks_worker")
def test_a_rotated_secret_signs_with_both_secrets_during_the_grace_period(
    api_server: str,
    keys_file: Path,
    throwaway: dict[str, Any],
    httpserver: HTTPServer,
) -> None:
    old = throwaway["webhook_secret"]
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", old)  # padded standard base64, 32 bytes
    assert len(base64.b64decode(old.removeprefix("whsec_"), validate=True)) == 32
    rotated = admin(keys_file, "rotate-webhook-secret", "--client", throwaway["client"])
    new = rotated["webhook_secret"]
    assert new != old and rotated["previous_until"] > time.time() + 86000
    listed = {row["client"]: row for row in admin(keys_file, "list")["keys"]}
    assert listed[throwaway["client"]]["rotation"].startswith("previous valid until")

    receiver = Receiver()
    httpserver.expect_request("/rotated", method="POST").respond_with_handler(receiver)
    key = throwaway["key"]
    wait_until(lambda: _jobs_status(api_server, key) == 200, REVOKED_WITHIN_S, "the new key")
    job_id = _submit(api_server, key, httpserver.url_for("/rotated"))
    assert wait_for_job(api_server, job_id)["status"] == "succeeded"
    assert _webhook_settled(api_server, job_id)["state"] == "delivered"

    (headers, body), *_ = receiver.requests
    timestamp = headers["Imgq-Timestamp"]
    assert re.fullmatch(r"v1=[0-9a-f]{64} v1=[0-9a-f]{64}", headers["Imgq-Signature"])
    assert signatures(headers["Imgq-Signature"]) == [
        _mac(new, timestamp, body),  # the new secret's first
        _mac(old, timestamp, body),
    ]
    verify = proposed_verifier()  # a receiver on either secret accepts the delivery
    assert verify(new, headers, body) and verify(old, headers, body)
    assert not verify("whsec_wrong", headers, body)

    # The session's own clients are still signed with their one secret.
    entries = {e["client"]: e for e in read_key_entries(keys_file)}
    assert entries["admin"]["webhook_secret"] == credentials.webhook_secrets["admin"]
    assert not entries["admin"].get("previous_webhook_secret")


@pytest.mark.usefixtures("predict_worker", "webhooks_worker")
def test_a_client_without_a_webhook_secret_gets_no_delivery(
    api_server: str,
    keys_file: Path,
    throwaway: dict[str, Any],
    httpserver: HTTPServer,
) -> None:
    with locked_key_file(keys_file):  # as the API's copy of the file would have it
        entries = read_key_entries(keys_file)
        for entry in entries:
            if entry["client"] == throwaway["client"]:
                entry.pop("webhook_secret")
        write_key_entries(keys_file, entries)
    listed = {row["client"]: row for row in admin(keys_file, "list")["keys"]}
    assert listed[throwaway["client"]]["webhook_secret"] is False

    receiver = Receiver()
    httpserver.expect_request("/unsigned", method="POST").respond_with_handler(receiver)
    key = throwaway["key"]
    wait_until(lambda: _jobs_status(api_server, key) == 200, REVOKED_WITHIN_S, "the new key")
    job_id = _submit(api_server, key, httpserver.url_for("/unsigned"))
    assert wait_for_job(api_server, job_id)["status"] == "succeeded"
    webhook = _webhook_settled(api_server, job_id)
    assert webhook["state"] == "failed"
    assert "no webhook secret" in webhook["attempts"][-1]["error"]
    assert receiver.requests == []
