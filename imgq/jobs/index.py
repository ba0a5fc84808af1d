"""Per-client indexes of jobs, newest first, for ``GET /jobs``.

Each client has a sorted set of its job ids scored by creation time, and admins read one for
everybody. Records expire on their own TTL; index entries older than the TTL are trimmed on
every insert, and entries whose record has already gone are skipped (and removed) on read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import redis

from imgq.redis_keys import ALL_JOBS, client_jobs

MAX_SCAN_FACTOR = 10
"""A filtered page reads at most this many index entries per job it returns."""


def add_to_indexes(
    pipe: redis.client.Pipeline, job_id: str, client: str, created_at: float, ttl_s: int
) -> None:
    """Index a new job (inside the caller's transaction) and trim expired entries."""
    for key in (ALL_JOBS, client_jobs(client)):
        pipe.zadd(key, {job_id: created_at})
        pipe.zremrangebyscore(key, "-inf", created_at - ttl_s)


def remove_from_indexes(pipe: redis.client.Pipeline, job_id: str, client: str | None) -> None:
    """Unlist a job that is being deleted (inside the caller's transaction)."""
    pipe.zrem(ALL_JOBS, job_id)
    if client is not None:
        pipe.zrem(client_jobs(client), job_id)


@dataclass(frozen=True)
class Page:
    """One page of job ids and where the next page starts (None at the end)."""

    job_ids: list[str]
    next_cursor: str | None


def page_of_ids(
    client: redis.Redis,
    key: str,
    limit: int,
    cursor: str | None,
    keep: Callable[[list[str]], list[str]],
) -> Page:
    """Up to ``limit`` ids, newest first, older than ``cursor``, for which ``keep(ids)`` says so.

    ``keep`` receives a batch of ids and returns the subset to keep (records gone, or not
    matching the filters, are dropped); the scan stops after ``limit * MAX_SCAN_FACTOR`` ids so a
    rare filter cannot make one request read the whole index.
    """
    upper = f"({cursor}" if cursor else "+inf"
    found: list[str] = []
    scanned, last_score = 0, None
    while len(found) < limit and scanned < limit * MAX_SCAN_FACTOR:
        batch = cast(
            "list[tuple[bytes, float]]",
            client.zrevrangebyscore(key, upper, "-inf", start=0, num=limit, withscores=True),
        )
        if not batch:
            return Page(found, None)
        ids = [member.decode() for member, _ in batch]
        exhausted = len(batch) < limit
        kept = set(keep(ids))
        for job_id, (_, score) in zip(ids, batch, strict=True):
            if job_id in kept and len(found) < limit:
                found.append(job_id)
                last_score = score
            elif len(found) >= limit:
                break
            else:
                last_score = score
        scanned += len(ids)
        upper = f"({last_score!r}"
        if exhausted and len(found) < limit:
            return Page(found, None)
    return Page(found, repr(last_score) if last_score is not None else None)
