"""Webhook deliveries: their state, their schedule in Redis, and the signature scheme.

A delivery's schedule lives in Redis, not in Celery ETA messages: an ETA message waits
unacknowledged in a worker, and on Redis any message unacknowledged past the visibility timeout
is handed out again, so hour-long retry delays would be duplicated. Instead:

* ``scheduled`` (sorted set, score = due time): a job enters it atomically when it ends with a
  callback URL (see ``imgq.job_scripts``), and again for each retry or redelivery;
* the scheduler moves due entries to ``inflight`` (score = lease expiry) in one Lua step and
  sends a delivery task; a delivery that never reports back (its worker died) is moved back
  when its lease runs out, so a delivery is never lost, only possibly repeated;
* the receiver deduplicates by ``Imgq-Event-Id``, which is the same for every attempt.

Signature: ``Imgq-Signature: v1=<hex>``, the HMAC-SHA256 of ``"<Imgq-Timestamp>.<body>"`` with
the client's webhook secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from typing import Any

import redis

from imgq.job_scripts import WEBHOOKS_SCHEDULED

WEBHOOKS_INFLIGHT = "imgq:webhooks:inflight"
"""Sorted set of deliveries handed to a worker, scored by when their lease runs out."""
LEASE_S = 120.0
"""A delivery not finished this long after it was handed out is scheduled again."""
JITTER = 0.2
"""Retry delays vary by up to this fraction either way, so failed receivers are not stampeded."""

_CLAIM_DUE = """
-- KEYS: scheduled, inflight. ARGV: now, lease expiry, limit. Moves due and expired entries.
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, job in ipairs(expired) do
  redis.call('ZREM', KEYS[2], job)
  redis.call('ZADD', KEYS[1], 'NX', ARGV[1], job)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, job in ipairs(due) do
  redis.call('ZREM', KEYS[1], job)
  redis.call('ZADD', KEYS[2], ARGV[2], job)
end
return due
"""


def state_key(job_id: str) -> str:
    """Key of a job's delivery state (JSON)."""
    return f"imgq:job:{job_id}:webhook"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``Imgq-Signature`` value for a body sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def retry_delay(schedule: list[float], attempt: int) -> float | None:
    """Seconds before attempt number ``attempt`` (0-based), jittered; None when none is left."""
    if attempt >= len(schedule):
        return None
    return schedule[attempt] * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311


class WebhookQueue:
    """Delivery state and schedule, shared by the API, the scheduler and the delivery task."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._claim_due = client.register_script(_CLAIM_DUE)

    def state(self, job_id: str) -> dict[str, Any] | None:
        """The delivery's state: url, state, attempts, next_attempt_at; None if never started."""
        raw = self._redis.get(state_key(job_id))
        return json.loads(raw) if raw else None

    def save(self, job_id: str, state: dict[str, Any]) -> None:
        """Store the state for as long as job records live."""
        self._redis.set(state_key(job_id), json.dumps(state), ex=self._ttl_s)

    def schedule(self, job_id: str, at: float) -> None:
        """Make the delivery due at ``at``."""
        self._redis.zadd(WEBHOOKS_SCHEDULED, {job_id: at})

    def claim_due(self, limit: int = 50) -> list[str]:
        """Due deliveries, now leased to the caller."""
        now = time.time()
        due = self._claim_due(
            keys=[WEBHOOKS_SCHEDULED, WEBHOOKS_INFLIGHT], args=[now, now + LEASE_S, limit]
        )
        return [job.decode() for job in due]

    def finish(self, job_id: str) -> None:
        """The delivery task is done with this lease (whatever the outcome)."""
        self._redis.zrem(WEBHOOKS_INFLIGHT, job_id)

    def lock(self, job_id: str) -> bool:
        """Only one attempt per job at a time, even if a lease was handed out twice."""
        return bool(
            self._redis.set(f"imgq:job:{job_id}:webhook-lock", "1", nx=True, ex=int(LEASE_S))
        )

    def unlock(self, job_id: str) -> None:
        """Release the attempt lock."""
        self._redis.delete(f"imgq:job:{job_id}:webhook-lock")
