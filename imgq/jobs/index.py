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


_Entry = tuple[str, float]
_Position = tuple[float, str]
"""Where a page stopped: the last entry's score and id (ties are ordered by id, descending)."""


def _parse_cursor(cursor: str | None) -> _Position | None:
    """``"<score>:<id>"``; a bare ``"<score>"`` (older cursors) starts below that score."""
    if not cursor:
        return None
    score, _, last_id = cursor.partition(":")
    return float(score), last_id


def _entries_after(
    client: redis.Redis, key: str, position: _Position | None, count: int
) -> list[_Entry]:
    """Up to ``count`` entries after ``position`` in (score, id) descending order.

    Redis orders equal scores by member, descending, so the entries tied with the position's
    score that sort below its id come first, then everything with a lower score. Two jobs
    created at the same instant are therefore never skipped at a page boundary.
    """
    upper, tied = "+inf", []
    if position is not None:
        score, last_id = position
        same = client.zrevrangebyscore(key, repr(score), repr(score), withscores=True)
        tied = [
            (member.decode(), float(value))
            for member, value in cast("list[tuple[bytes, float]]", same)
            if member.decode() < last_id
        ][:count]
        upper = f"({score!r}"
    if len(tied) >= count:
        return tied
    rest = client.zrevrangebyscore(
        key, upper, "-inf", start=0, num=count - len(tied), withscores=True
    )
    return tied + [
        (member.decode(), float(value)) for member, value in cast("list[tuple[bytes, float]]", rest)
    ]


def page_of_ids(
    client: redis.Redis,
    key: str,
    limit: int,
    cursor: str | None,
    keep: Callable[[list[str]], list[str]],
) -> Page:
    """Up to ``limit`` ids, newest first, after ``cursor``, for which ``keep(ids)`` says so.

    ``keep`` receives a batch of ids and returns the subset to keep (records gone, or not
    matching the filters, are dropped); the scan stops after ``limit * MAX_SCAN_FACTOR`` ids so a
    rare filter cannot make one request read the whole index.
    """
    position = _parse_cursor(cursor)
    found: list[str] = []
    scanned = 0
    while len(found) < limit and scanned < limit * MAX_SCAN_FACTOR:
        batch = _entries_after(client, key, position, limit)
        if not batch:
            return Page(found, None)
        kept = set(keep([job_id for job_id, _ in batch]))
        for job_id, score in batch:
            if len(found) >= limit:
                break
            if job_id in kept:
                found.append(job_id)
            position = (score, job_id)
        scanned += len(batch)
        if len(batch) < limit and len(found) < limit:
            return Page(found, None)
    if position is None:
        return Page(found, None)
    return Page(found, f"{position[0]!r}:{position[1]}")
