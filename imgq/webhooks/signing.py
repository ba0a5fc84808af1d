"""The webhook signature scheme.

``Imgq-Signature: v1=<hex>`` is the HMAC-SHA256 of ``"<Imgq-Timestamp>.<raw body>"`` with the
client's webhook secret; receivers recompute it and reject stale timestamps (the README shows
how).
"""

from __future__ import annotations

import hashlib
import hmac


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``Imgq-Signature`` value for a body sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"
