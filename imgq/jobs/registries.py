"""Registries of open jobs that something must keep watching (rq keeps its
``StartedJobRegistry`` beside ``Job`` the same way).

* ``HeartbeatRegistry``: running fine-tunes and exports, scored by their last heartbeat. A job
  whose worker died stops beating, and the reaper fails it (``workers.reaper``).
* ``PredictChecks``: open predict jobs, scored by when the reaper next looks for their lost
  messages and checks their deadline.

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


class PredictChecks:
    """When the reaper next looks at each open predict job."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    @staticmethod
    def schedule(pipe: redis.client.Pipeline, job_id: str, at: float) -> None:
        """Have the reaper look at a new job at ``at`` (inside the caller's transaction)."""
        pipe.zadd(redis_keys.PREDICT_CHECKS, {job_id: at})

    def claim_due(self, limit: int = 100) -> list[str]:
        """Take open predict jobs due for a check; each goes to exactly one caller."""
        members = cast(
            "list[bytes]",
            self._redis.zrangebyscore(
                redis_keys.PREDICT_CHECKS, "-inf", time.time(), start=0, num=limit
            ),
        )
        pipe = self._redis.pipeline(transaction=False)
        for member in members:
            pipe.zrem(redis_keys.PREDICT_CHECKS, member)
        claimed = pipe.execute()
        return [_text(m) for m, won in zip(members, claimed, strict=True) if won]

    def check_again(self, job_id: str, after_s: float, *, resent: int = 0) -> None:
        """Look at an open job again ``after_s`` from now.

        ``resent`` counts images just sent again, kept on the record as ``requeues`` and in
        the ``imgq_resent_images`` total.
        """
        pipe = self._redis.pipeline(transaction=True)
        if resent:
            pipe.hincrby(redis_keys.job_record(job_id), "requeues", resent)
            pipe.incrby(redis_keys.RESENT_IMAGES, resent)
        pipe.zadd(redis_keys.PREDICT_CHECKS, {job_id: time.time() + after_s})
        pipe.execute()
