"""Standard Webhooks signatures (https://www.standardwebhooks.com), sent beside ``Imgq-*``.

Every delivery carries, next to ``Imgq-Event-Id``, ``Imgq-Timestamp`` and ``Imgq-Signature``,
the spec's three headers, so receivers can verify with any Standard Webhooks library:

* ``webhook-id``: the message's id, the same on every attempt and redelivery of one event
  (``webhook_id``): a model event's ``evt_<hex>``, a job's ``job_<job id>``. The spec signs
  ``"{id}.{timestamp}.{body}"``, so an id may hold no dot (``Imgq-Event-Id`` does, which is
  why it is not reused);
* ``webhook-timestamp``: Unix seconds, the same value as ``Imgq-Timestamp``;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` per valid secret, the new one first,
  separated by spaces (during a rotation the old secret still signs).

The spec keys the HMAC with the bytes the secret's base64 (after ``whsec_``) decodes to, not
with its text as ``Imgq-Signature`` does. Only a secret in the spec's form can do that:
``whsec_`` and padded standard base64 of 24 to 64 bytes, which is what ``imgq-admin`` issues.
Secrets issued by the first keys release (``whsec_`` and URL-safe unpadded base64) do not
decode strictly; decoding them leniently, as some libraries do, would key with bytes neither
side chose. Such a secret still signs ``Imgq-Signature``, and the delivery record says why the
``webhook-*`` headers are missing (``standard_headers``); rotating the secret fixes it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field

from imgq.api_keys import WHSEC_PREFIX
from imgq.webhooks.events import EVENT_PREFIX

MIN_KEY_BYTES = 24
"""The spec's shortest symmetric secret (192 bits)."""
MAX_KEY_BYTES = 64
"""The spec's longest symmetric secret (512 bits)."""
SCHEME = "v1"
"""The spec's symmetric (HMAC-SHA256) signature scheme, before ``,`` in each signature."""
JOB_ID_PREFIX = "job_"
"""Start of a job delivery's ``webhook-id``."""


def webhook_id(delivery_id: str) -> str:
    """The ``webhook-id`` of a delivery: the same for every attempt and redelivery.

    A model event's id (``evt_<hex>``) is used as it is; a job's delivery is ``job_<job id>``,
    since a job ends, and so sends one message, once.

    Args:
        delivery_id: the job id or model event id the delivery is scheduled under.

    Returns:
        An id with no ``.`` in it.

    Raises:
        ValueError: if ``delivery_id`` is empty or holds a ``.``.
    """
    if not delivery_id or "." in delivery_id:
        raise ValueError(
            f"a webhook-id needs a non-empty delivery id without '.'; received {delivery_id!r}"
        )
    return delivery_id if delivery_id.startswith(EVENT_PREFIX) else JOB_ID_PREFIX + delivery_id


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: what its base64 after ``whsec_`` decodes to.

    Args:
        secret: a client's webhook secret as the keys file holds it.

    Returns:
        The 24 to 64 key bytes.

    Raises:
        ValueError: saying why the secret is not in the spec's form (never quoting it).
    """
    if not secret.startswith(WHSEC_PREFIX):
        raise ValueError(f"the secret does not start with {WHSEC_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(WHSEC_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError(
            f"the secret after {WHSEC_PREFIX!r} is not padded standard base64 (secrets issued "
            "before Standard Webhooks support are URL-safe base64 without padding)"
        ) from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(
            f"the secret decodes to {len(key)} bytes; Standard Webhooks secrets have "
            f"{MIN_KEY_BYTES} to {MAX_KEY_BYTES}"
        )
    return key


def is_standard_secret(secret: str) -> bool:
    """Whether ``secret`` can sign ``webhook-signature`` (see ``signing_key``)."""
    try:
        signing_key(secret)
    except ValueError:
        return False
    return True


def sign(key: bytes, message_id: str, timestamp: str, body: bytes) -> str:
    """One ``v1,<base64>`` signature: HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``.

    Args:
        key: the decoded secret (``signing_key``).
        message_id: the ``webhook-id``.
        timestamp: the ``webhook-timestamp`` (Unix seconds, as sent).
        body: the raw request body.

    Returns:
        The signature as the header lists it.
    """
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SCHEME},{base64.b64encode(digest).decode()}"


@dataclass(frozen=True)
class StandardHeaders:
    """The ``webhook-*`` headers of one attempt, and what the delivery record says of them."""

    headers: dict[str, str] = field(default_factory=dict)
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``; empty when no secret
    of the client is in the spec's form."""
    reason: str | None = None
    """Why the headers are missing, or why a secret was left out of the signature."""

    def record(self) -> dict[str, object]:
        """The attempt record's ``standard_webhooks`` entry: ``sent`` and, if any, ``reason``."""
        entry: dict[str, object] = {"sent": bool(self.headers)}
        if self.reason:
            entry["reason"] = self.reason
        return entry


def standard_headers(
    secrets: Sequence[str], message_id: str, timestamp: str, body: bytes
) -> StandardHeaders:
    """The Standard Webhooks headers of a delivery signed with ``secrets`` (current first).

    Secrets not in the spec's form are left out of ``webhook-signature``; when none is left,
    no ``webhook-*`` header is sent at all (a receiver on a Standard Webhooks library would
    reject a delivery without a signature it can check anyway).

    Args:
        secrets: the client's valid webhook secrets, the current one first.
        message_id: the ``webhook-id`` (``webhook_id``).
        timestamp: Unix seconds, the same as ``Imgq-Timestamp``.
        body: the raw request body.

    Returns:
        The headers, and the reason for any secret that could not sign.
    """
    keys, problems = [], []
    for number, secret in enumerate(secrets):
        name = "current" if number == 0 else "previous"
        try:
            keys.append(signing_key(secret))
        except ValueError as exc:
            problems.append(
                f"the {name} webhook secret is not in the Standard Webhooks form: {exc}"
            )
    if not keys:
        return StandardHeaders(
            reason="; ".join(problems)
            + "; only Imgq-Signature is sent (imgq-admin keys rotate-webhook-secret issues one)"
        )
    signature = " ".join(sign(key, message_id, timestamp, body) for key in keys)
    headers = {
        "webhook-id": message_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": signature,
    }
    return StandardHeaders(headers, "; ".join(problems) or None)
