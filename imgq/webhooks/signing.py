"""The webhook signature scheme.

``Imgq-Signature: v1=<hex>`` is the HMAC-SHA256 of ``"<Imgq-Timestamp>.<raw body>"`` with the
client's webhook secret; receivers recompute it and reject stale timestamps (the README shows
how). While a secret is being rotated the header lists one signature per valid secret, the new
one first, separated by spaces: ``v1=<hex with new> v1=<hex with old>``; a receiver accepts the
delivery if any listed value matches, so it may switch secrets at any time during the grace
period.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

SCHEME = "v1"
"""The signature scheme's name, before ``=`` in each listed signature."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """One ``v1=<hex>`` signature of a body sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"{SCHEME}={mac.hexdigest()}"


def signature_header(secrets: Sequence[str], timestamp: str, body: bytes) -> str:
    """The ``Imgq-Signature`` value: one signature per secret, in the order given."""
    if not secrets or not all(secrets):
        raise ValueError("a delivery is signed with at least one secret, none empty")
    return " ".join(sign(secret, timestamp, body) for secret in secrets)


def signatures(header: str) -> list[str]:
    """The hex digests an ``Imgq-Signature`` header lists for the ``v1`` scheme."""
    found = []
    for part in header.split():
        scheme, _, digest = part.partition("=")
        if scheme == SCHEME and digest:
            found.append(digest)
    return found


def verify(secret: str, header: str, timestamp: str, body: bytes) -> bool:
    """Whether any signature in ``header`` was made with ``secret`` (no freshness check)."""
    expected = sign(secret, timestamp, body).partition("=")[2]
    matched = False
    for digest in signatures(header):
        matched |= hmac.compare_digest(expected, digest)
    return matched
