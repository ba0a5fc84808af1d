"""Registries of open jobs that something must keep watching (rq keeps its
``StartedJobRegistry`` beside ``Job`` the same way).

* ``HeartbeatRegistry``: running fine-tunes and exports, scored by their last heartbeat. A job
  whose worker died stops beating, and the reaper fails it (``workers.reaper``).
* ``PredictChecks``: open predict jobs, scored by when the reaper next looks for their lost
  messages and checks their deadline. A reaper claims a due job by leasing it (its score moves
  to the lease's end), never by removing it, so a reaper that dies mid-sweep loses no job: it
  is due again once the lease runs out (the pattern of ``imgq.webhooks.schedule``).

A job leaves both when it ends, inside the Lua script that ends it (``imgq.jobs.scripts``).
"""

from __future__ import annotations

import time
from typing import cast

import redis

from imgq import redis_keys


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class HeartbeatRegistry:
    """Long jobs that beat while they run; a silent one has lost its worker."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def watch(self, job_id: str) -> None:
        """Start expecting heartbeats from a long job that has just started running."""
        self._redis.zadd(redis_keys.HEARTBEATS, {job_id: time.time()})

    def beat(self, job_id: str) -> None:
        """The job is alive (a no-op once it has ended and left the registry)."""
        self._redis.zadd(redis_keys.HEARTBEATS, {job_id: time.time()}, xx=True)

    def silent(self, silent_for_s: float) -> list[str]:
        """Jobs that have not beaten for ``silent_for_s``."""
        members = self._redis.zrangebyscore(
            redis_keys.HEARTBEATS, "-inf", time.time() - silent_for_s
        )
        return [_text(job) for job in cast("list[bytes]", members)]

    def forget(self, job_id: str) -> None:
        """Stop watching a job (the reaper failed it, or it had already ended)."""
        self._redis.zrem(redis_keys.HEARTBEATS, job_id)


LEASE_S = 30
"""How long a claimed check is its claimer's when the caller names no lease (the default of
``IMGQ_PREDICT_CHECK_INTERVAL_S``, which the reaper passes)."""

_CLAIM_DUE = """
-- KEYS: checks. ARGV: now, lease expiry, limit. Leases due jobs: they stay, due later.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, job in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], job)
end
return due
"""


class PredictChecks:
    """When the reaper next looks at each open predict job."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._claim_due = client.register_script(_CLAIM_DUE)

    @staticmethod
    def schedule(pipe: redis.client.Pipeline, job_id: str, at: float) -> None:
        """Have the reaper look at a new job at ``at`` (inside the caller's transaction)."""
        pipe.zadd(redis_keys.PREDICT_CHECKS, {job_id: at})

    def claim_due(self, limit: int = 100, *, lease_s: float = LEASE_S) -> list[str]:
        """Lease open predict jobs due for a check to the caller for ``lease_s``.

        One atomic step picks the due jobs and makes them due again at the lease's end, so
        concurrent callers never get the same job within a lease, and a job whose claimer died
        before ``check_again`` or ``forget`` is claimed again once the lease has passed.
        """
        now = time.time()
        due = cast(
            "list[bytes]",
            self._claim_due(keys=[redis_keys.PREDICT_CHECKS], args=[now, now + lease_s, limit]),
        )
        return [_text(job) for job in due]

    def check_again(self, job_id: str, after_s: float, *, resent: int = 0) -> None:
        """Look at an open job again ``after_s`` from now.

        ``resent`` counts images just sent again, kept on the record as ``requeues`` and in
        the ``imgq_resent_images`` total. Only a job still watched is rescheduled (``XX``): one
        that ended since its claim has left the checks for good.
        """
        pipe = self._redis.pipeline(transaction=True)
        if resent:
            pipe.hincrby(redis_keys.job_record(job_id), "requeues", resent)
            pipe.incrby(redis_keys.RESENT_IMAGES, resent)
        pipe.zadd(redis_keys.PREDICT_CHECKS, {job_id: time.time() + after_s}, xx=True)
        pipe.execute()

    def forget(self, job_id: str) -> None:
        """Stop looking at a job (its record is gone, or it has ended already)."""
        self._redis.zrem(redis_keys.PREDICT_CHECKS, job_id)
