"""Idempotency keys: a client retrying a submission gets the job it already created.

``Idempotency-Key`` is remembered per client for as long as job records live, with a
fingerprint of the request's content (not its bytes: multipart boundaries change between
retries). The key is claimed with ``SET NX`` before the job is created, so two concurrent
retries cannot both create a job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import redis

from imgq.errors import IdempotencyConflict
from imgq.redis_keys import idempotency_key


@dataclass(frozen=True)
class Claim:
    """What a key already stands for."""

    job_id: str
    fingerprint: str


def fingerprint(*parts: bytes | str) -> str:
    """A digest of a request's meaningful content."""
    digest = hashlib.sha256()
    for part in parts:
        chunk = part.encode() if isinstance(part, str) else part
        digest.update(hashlib.sha256(chunk).digest())
    return digest.hexdigest()


class IdempotencyKeys:
    """Claims and looks up idempotency keys in Redis."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s

    def claim(self, client: str, key: str, content: str, job_id: str) -> Claim | None:
        """Claim ``key`` for a new job; returns the earlier claim instead if there is one.

        Raises:
            IdempotencyConflict: the key was used with different content.
        """
        value = json.dumps({"job_id": job_id, "fingerprint": content})
        if self._redis.set(idempotency_key(client, key), value, nx=True, ex=self._ttl_s):
            return None
        raw = self._redis.get(idempotency_key(client, key))
        if raw is None:  # expired between the two calls: claim again
            return self.claim(client, key, content, job_id)
        earlier = Claim(**json.loads(raw))
        if earlier.fingerprint != content:
            raise IdempotencyConflict(
                "This Idempotency-Key was already used with a different request.",
                {"job_id": earlier.job_id},
            )
        return earlier

    def release(self, client: str, key: str) -> None:
        """Forget a claim whose job could not be created."""
        self._redis.delete(idempotency_key(client, key))
