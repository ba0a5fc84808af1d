"""Standard Webhooks signing (``imgq.webhooks.standard``) against the ``standardwebhooks`` and
``svix`` verifiers: the secret's form, the ids, rotation and secrets that cannot sign."""

from __future__ import annotations

import base64
import secrets
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError
from svix.webhooks import Webhook as SvixWebhook

from imgq.api_keys import new_webhook_secret
from imgq.webhooks.standard import (
    is_standard_secret,
    sign,
    signing_key,
    standard_headers,
    webhook_id,
)

BODY = b'{"id": "4f1c", "status": "succeeded"}'
LEGACY = "whsec_" + secrets.token_urlsafe(32)
"""A secret as the first keys release issued it: URL-safe base64, no padding."""


def _now() -> str:
    return str(int(time.time()))


def test_an_issued_secret_keys_with_the_32_bytes_its_base64_decodes_to() -> None:
    secret = new_webhook_secret()

    key = signing_key(secret)

    assert key == base64.b64decode(secret.removeprefix("whsec_"))
    assert len(key) == 32 and is_standard_secret(secret)


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        (LEGACY, "not padded standard base64"),
        ("whsec_legacy", "not padded standard base64"),
        ("s3cret", "does not start with"),
        ("whsec_" + base64.b64encode(b"x" * 16).decode(), "16 bytes"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "65 bytes"),
        ("whsec_", "0 bytes"),
    ],
)
def test_a_secret_not_in_the_spec_form_is_refused_saying_why_without_quoting_it(
    secret: str, why: str
) -> None:
    with pytest.raises(ValueError, match=why) as error:
        signing_key(secret)
    quoted = secret.removeprefix("whsec_")
    assert not quoted or quoted not in str(error.value)
    assert not is_standard_secret(secret)


def test_headers_verify_with_the_standardwebhooks_and_svix_libraries() -> None:
    secret, timestamp = new_webhook_secret(), _now()

    signed = standard_headers([secret], "job_4f1c", timestamp, BODY)

    assert signed.reason is None and signed.record() == {"sent": True}
    assert signed.headers["webhook-id"] == "job_4f1c"
    assert signed.headers["webhook-timestamp"] == timestamp
    assert signed.headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY, signed.headers) == {"id": "4f1c", "status": "succeeded"}
    SvixWebhook(secret).verify(BODY, signed.headers)  # raises if it disagrees
    with pytest.raises(WebhookVerificationError):
        Webhook(new_webhook_secret()).verify(BODY, signed.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", signed.headers)


def test_during_a_rotation_each_secret_verifies_the_listed_signatures() -> None:
    new, old, timestamp = new_webhook_secret(), new_webhook_secret(), _now()

    signed = standard_headers([new, old], "evt_01", timestamp, BODY)

    listed = signed.headers["webhook-signature"].split(" ")
    assert listed == [
        sign(signing_key(new), "evt_01", timestamp, BODY),  # the new secret's first
        sign(signing_key(old), "evt_01", timestamp, BODY),
    ]
    for secret in (new, old):
        Webhook(secret).verify(BODY, signed.headers)
        SvixWebhook(secret).verify(BODY, signed.headers)


def test_a_legacy_secret_sends_no_standard_headers_and_the_record_says_why() -> None:
    signed = standard_headers([LEGACY], "job_4f1c", _now(), BODY)

    assert signed.headers == {}
    record = signed.record()
    assert record["sent"] is False
    assert "current webhook secret is not in the Standard Webhooks form" in str(record["reason"])
    assert "rotate-webhook-secret" in str(record["reason"])
    assert LEGACY.removeprefix("whsec_") not in str(record)


def test_rotating_away_from_a_legacy_secret_signs_with_the_new_one_only() -> None:
    new = new_webhook_secret()

    signed = standard_headers([new, LEGACY], "job_4f1c", _now(), BODY)

    assert len(signed.headers["webhook-signature"].split()) == 1
    Webhook(new).verify(BODY, signed.headers)
    assert signed.record()["sent"] is True
    assert "previous webhook secret" in str(signed.record()["reason"])


def test_webhook_ids_have_no_dot_and_name_the_job_or_the_event() -> None:
    assert webhook_id("4f1c9a") == "job_4f1c9a"
    assert webhook_id("evt_0123abcd") == "evt_0123abcd"
    for bad in ("", "4f1c.succeeded"):
        with pytest.raises(ValueError, match=r"without '\.'"):
            webhook_id(bad)
