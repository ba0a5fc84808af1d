"""What happens to models: announcements that make prediction workers swap at once, and the
vocabulary of each model's event log.

The registry file ``<store>/<model>/active`` is the truth about what is served; the pub/sub
channel only makes workers look now instead of at their next periodic check. The event log
(``GET /models/<name>/events``, kept beside the model on the store) says who changed what and
why: every publish, activation, rollback, share change and deletion.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

import redis

from imgq.redis_keys import MODELS_CHANNEL

SYSTEM = "system"
"""``by`` of events nobody asked for in person (the activation gate)."""


class ModelEvent(StrEnum):
    """Kinds of entries in a model's event log."""

    PUBLISHED = "published"
    ACTIVATED = "activated"
    ROLLED_BACK = "rolled_back"
    SHARED = "shared"
    UNSHARED = "unshared"
    VERSION_DELETED = "version_deleted"
    SETTINGS_CHANGED = "settings_changed"
    DRIFT_DETECTED = "drift_detected"


def model_event(
    event: ModelEvent,
    by: str,
    *,
    version: int | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One entry of a model's event log, stamped now."""
    return {
        "at": time.time(),
        "event": event.value,
        "by": by,
        "version": version,
        "reason": reason,
        "details": details,
    }


def announce_activation(client: redis.Redis, model: str) -> None:
    """Tell every prediction worker to re-read ``model``'s active version."""
    client.publish(MODELS_CHANNEL, model)
