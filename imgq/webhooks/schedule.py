"""Where deliveries wait: their state and their schedule in Redis, with leases.

A delivery's schedule lives in Redis, not in Celery ETA messages: an ETA message waits
unacknowledged in a worker, and on Redis any message unacknowledged past the visibility timeout
is handed out again, so hour-long retry delays would be duplicated. Instead:

* ``WEBHOOKS_SCHEDULED`` (sorted set, score = due time): a job enters it atomically when it
  ends with a callback URL (see ``imgq.jobs.scripts``), and again for each retry or redelivery;
* the scheduler moves due entries to ``WEBHOOKS_INFLIGHT`` (score = lease expiry) in one Lua
  step and sends a delivery task; a delivery that never reports back (its worker died) is moved
  back when its lease (``IMGQ_WEBHOOK_LEASE_S``) runs out, so a delivery is never lost, only
  possibly repeated;
* the receiver deduplicates by ``Imgq-Event-Id``, which is the same for every attempt.
"""

from __future__ import annotations

import time

import redis

from imgq import redis_keys
from imgq.webhooks.delivery import Delivery

LEASE_S = 120
"""A delivery not finished this long after it was handed out is scheduled again (the default
of ``IMGQ_WEBHOOK_LEASE_S``)."""

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


class DeliveryStore:
    """Delivery state and schedule, shared by the API, the scheduler and the delivery task."""

    def __init__(self, client: redis.Redis, ttl_s: int, lease_s: int = LEASE_S) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._lease_s = lease_s
        self._claim_due = client.register_script(_CLAIM_DUE)

    def load(self, job_id: str) -> Delivery | None:
        """The job's delivery; None if its first attempt has not run yet."""
        raw = self._redis.get(redis_keys.webhook_delivery(job_id))
        return Delivery.from_json(raw) if raw else None

    def save(self, job_id: str, delivery: Delivery) -> None:
        """Store the delivery for as long as job records live."""
        self._redis.set(redis_keys.webhook_delivery(job_id), delivery.to_json(), ex=self._ttl_s)

    def schedule(self, job_id: str, at: float) -> None:
        """Make the delivery due at ``at``."""
        self._redis.zadd(redis_keys.WEBHOOKS_SCHEDULED, {job_id: at})

    def claim_due(self, limit: int = 50) -> list[str]:
        """Due deliveries, now leased to the caller."""
        now = time.time()
        due = self._claim_due(
            keys=[redis_keys.WEBHOOKS_SCHEDULED, redis_keys.WEBHOOKS_INFLIGHT],
            args=[now, now + self._lease_s, limit],
        )
        return [job.decode() for job in due]

    def finish(self, job_id: str) -> None:
        """The delivery task is done with this lease (whatever the outcome)."""
        self._redis.zrem(redis_keys.WEBHOOKS_INFLIGHT, job_id)

    def lock(self, job_id: str) -> bool:
        """Only one attempt per job at a time, even if a lease was handed out twice."""
        return bool(
            self._redis.set(redis_keys.webhook_lock(job_id), "1", nx=True, ex=self._lease_s)
        )

    def unlock(self, job_id: str) -> None:
        """Release the attempt lock."""
        self._redis.delete(redis_keys.webhook_lock(job_id))
