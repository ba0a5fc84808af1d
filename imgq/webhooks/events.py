"""Webhooks about models rather than jobs (``model.drift_detected``), through the same pipe.

A model event is kept in Redis like a job's outcome (its body, the model's callback URL and
owner, for ``IMGQ_JOB_TTL_S``) and scheduled in the same sorted set, so it is delivered,
retried, leased and signed exactly as job webhooks are (``imgq.webhooks.schedule``,
``workers.webhook_delivery``). Event ids start with ``EVENT_PREFIX``, which no job id does.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from imgq import redis_keys

EVENT_PREFIX = "evt_"
"""Start of every model event's id (job ids are plain hex)."""


def is_event(delivery_id: str) -> bool:
    """Whether a scheduled delivery is a model event rather than a job."""
    return delivery_id.startswith(EVENT_PREFIX)


class WebhookEvents:
    """Model events waiting for, or done with, their delivery."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s

    def send(self, event_type: str, client: str, callback_url: str, body: dict[str, Any]) -> str:
        """Store an event and schedule its delivery now; returns its id."""
        event_id = f"{EVENT_PREFIX}{uuid.uuid4().hex}"
        document = {"id": event_id, "type": event_type, "at": time.time(), **body}
        record: dict[FieldT, EncodableT] = {
            "id": event_id,
            "status": event_type,
            "client": client,
            "callback_url": callback_url,
            "body": json.dumps(document, sort_keys=True),
        }
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(redis_keys.webhook_event(event_id), mapping=record)
        pipe.expire(redis_keys.webhook_event(event_id), self._ttl_s)
        pipe.zadd(redis_keys.WEBHOOKS_SCHEDULED, {event_id: time.time()})
        pipe.execute()
        return event_id

    def fields(self, event_id: str) -> dict[str, str]:
        """The event's record (``callback_url``, ``client``, ``status``, ``body``); empty once
        it has expired."""
        found = self._redis.hgetall(redis_keys.webhook_event(event_id))
        return {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in found.items()
        }
