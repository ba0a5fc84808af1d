"""What happens to models: announcements that make prediction workers swap at once, and the
vocabulary of each model's event log.

The registry file ``<store>/<model>/active`` is the truth about what is served; the pub/sub
channel only makes workers look now instead of at their next periodic check. The event log
(``GET /models/<name>/events``, kept beside the model on the store) says who changed what and
why: every publish, activation, rollback, share change and deletion.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import redis

from imgq.redis_keys import MODELS_CHANNEL
from imgq.webhooks.events import WebhookEvents

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
    POLICY_CHANGED = "policy_changed"
    RETRAIN_STARTED = "retrain_started"
    RETRAIN_FAILED = "retrain_failed"
    CANARY_STARTED = "canary_started"
    CANARY_CHANGED = "canary_changed"
    CANARY_ENDED = "canary_ended"
    PROMOTED = "promoted"


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


ROLLOUT_EVENTS = frozenset(
    {
        ModelEvent.RETRAIN_STARTED,
        ModelEvent.RETRAIN_FAILED,
        ModelEvent.CANARY_STARTED,
        ModelEvent.CANARY_CHANGED,
        ModelEvent.CANARY_ENDED,
        ModelEvent.PROMOTED,
    }
)
"""Events also sent as ``model.<event>`` webhooks to the model's callback URL (drift has its
own, with the monitoring document: ``workers.drift_check``)."""


def publish(
    event: dict[str, Any],
    *,
    record: Callable[[dict[str, Any]], None],
    webhooks: WebhookEvents,
    callback_url: str | None,
    owner: str,
    model: str,
) -> None:
    """Put an event in the model's log (``record``) and, for rollout events, send it as a
    signed ``model.<event>`` webhook when the model has a callback URL."""
    record(event)
    if callback_url and event["event"] in ROLLOUT_EVENTS:
        webhooks.send(
            f"model.{event['event']}",
            owner,
            callback_url,
            {"model": model, "owner": owner, **event},
        )
