"""Per-client job indexes on the real Redis: newest first, cursors, filters and TTL trimming.

Every test indexes jobs for a client of its own, with creation times far in the past (around
t = 1000 s) so that the trimming done on insert never reaches the real jobs other tests keep in
the shared all-jobs index; the fixture removes the test's ids from both indexes afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from imgq.jobs.index import MAX_SCAN_FACTOR, Page, add_to_indexes, page_of_ids
from imgq.redis_keys import ALL_JOBS, client_jobs

TTL_S = 10_000
"""Long enough that no test entry is trimmed unless the test means it."""
START = 1_000.123456789
"""Creation time of a test's first job; later jobs are a quarter second apart."""


@pytest.fixture
def client(redis_client: redis.Redis) -> Iterator[str]:
    """A client name no other test uses; its index and its ids in the all-jobs index go after."""
    name = f"unit-{uuid.uuid4().hex}"
    yield name
    ids = redis_client.zrange(client_jobs(name), 0, -1)
    if ids:
        redis_client.zrem(ALL_JOBS, *ids)
    redis_client.delete(client_jobs(name))


def _index_jobs(
    redis_client: redis.Redis, client: str, count: int, ttl_s: int = TTL_S
) -> list[str]:
    """Index ``count`` jobs created one after another; returns their ids oldest first."""
    job_ids = [f"{client}-{number:03d}" for number in range(count)]
    pipe = redis_client.pipeline(transaction=True)
    for number, job_id in enumerate(job_ids):
        add_to_indexes(pipe, job_id, client, START + number * 0.25, ttl_s)
    pipe.execute()
    return job_ids


def _keep_all(job_ids: list[str]) -> list[str]:
    return job_ids


def _every_page(
    redis_client: redis.Redis, key: str, limit: int, keep: Callable[[list[str]], list[str]]
) -> list[Page]:
    pages = [page_of_ids(redis_client, key, limit, None, keep)]
    while pages[-1].next_cursor is not None:
        assert len(pages) < 100, "paging does not end"
        pages.append(page_of_ids(redis_client, key, limit, pages[-1].next_cursor, keep))
    return pages


def test_a_page_lists_the_newest_jobs_first(redis_client: redis.Redis, client: str) -> None:
    job_ids = _index_jobs(redis_client, client, 7)

    page = page_of_ids(redis_client, client_jobs(client), 3, None, _keep_all)

    assert page.job_ids == job_ids[::-1][:3]
    assert page.next_cursor is not None


def test_the_cursor_continues_where_the_last_page_ended(
    redis_client: redis.Redis, client: str
) -> None:
    job_ids = _index_jobs(redis_client, client, 7)
    first = page_of_ids(redis_client, client_jobs(client), 3, None, _keep_all)

    second = page_of_ids(redis_client, client_jobs(client), 3, first.next_cursor, _keep_all)

    assert second.job_ids == job_ids[::-1][3:6]


def test_paging_to_the_end_lists_every_job_once_in_order(
    redis_client: redis.Redis, client: str
) -> None:
    job_ids = _index_jobs(redis_client, client, 25)

    pages = _every_page(redis_client, client_jobs(client), 4, _keep_all)

    listed = [job_id for page in pages for job_id in page.job_ids]
    assert listed == job_ids[::-1]
    assert [len(page.job_ids) for page in pages] == [4, 4, 4, 4, 4, 4, 1]
    assert pages[-1].next_cursor is None


def test_a_short_last_page_has_no_next_cursor(redis_client: redis.Redis, client: str) -> None:
    job_ids = _index_jobs(redis_client, client, 2)

    page = page_of_ids(redis_client, client_jobs(client), 5, None, _keep_all)

    assert page == Page(job_ids[::-1], None)


def test_a_page_past_the_end_is_empty_with_no_next_cursor(
    redis_client: redis.Redis, client: str
) -> None:
    _index_jobs(redis_client, client, 3)
    full = page_of_ids(redis_client, client_jobs(client), 3, None, _keep_all)

    after = page_of_ids(redis_client, client_jobs(client), 3, full.next_cursor, _keep_all)

    assert after == Page([], None)


def test_an_empty_index_gives_an_empty_page(redis_client: redis.Redis, client: str) -> None:
    assert page_of_ids(redis_client, client_jobs(client), 5, None, _keep_all) == Page([], None)


def test_a_filter_that_drops_most_jobs_still_fills_every_page(
    redis_client: redis.Redis, client: str
) -> None:
    job_ids = _index_jobs(redis_client, client, 40)
    matching = set(job_ids[::4])  # one in four: a page of 3 reads 12 entries, under the cap

    def keep(batch: list[str]) -> list[str]:
        return [job_id for job_id in batch if job_id in matching]

    pages = _every_page(redis_client, client_jobs(client), 3, keep)

    assert [page.job_ids for page in pages] == [
        [job_id for job_id in job_ids[::-1] if job_id in matching][start : start + 3]
        for start in range(0, 12, 3)
    ]
    assert pages[-1].next_cursor is None


def test_a_rare_filter_stops_at_the_scan_cap_and_the_cursor_goes_on_from_there(
    redis_client: redis.Redis, client: str
) -> None:
    job_ids = _index_jobs(redis_client, client, 50)
    limit = 2
    offered: list[int] = []

    def keep_oldest(batch: list[str]) -> list[str]:
        offered.append(len(batch))
        return [job_id for job_id in batch if job_id == job_ids[0]]

    first = page_of_ids(redis_client, client_jobs(client), limit, None, keep_oldest)

    assert first.job_ids == []
    assert sum(offered) == limit * MAX_SCAN_FACTOR
    assert first.next_cursor is not None
    rest = _every_page(redis_client, client_jobs(client), limit, keep_oldest)
    assert [job_id for page in rest for job_id in page.job_ids] == [job_ids[0]]


def test_a_filter_drops_ids_within_a_page_without_skipping_the_next_match(
    redis_client: redis.Redis, client: str
) -> None:
    job_ids = _index_jobs(redis_client, client, 10)
    newest_first = job_ids[::-1]
    dropped = {newest_first[1], newest_first[2]}

    def keep(batch: list[str]) -> list[str]:
        return [job_id for job_id in batch if job_id not in dropped]

    first = page_of_ids(redis_client, client_jobs(client), 3, None, keep)
    second = page_of_ids(redis_client, client_jobs(client), 3, first.next_cursor, keep)

    assert first.job_ids == [newest_first[0], newest_first[3], newest_first[4]]
    assert second.job_ids == newest_first[5:8]


def test_indexing_lists_a_job_for_its_client_and_for_admins(
    redis_client: redis.Redis, client: str
) -> None:
    (job_id,) = _index_jobs(redis_client, client, 1)

    assert redis_client.zscore(client_jobs(client), job_id) == START
    assert redis_client.zscore(ALL_JOBS, job_id) == START


def test_inserting_a_job_trims_entries_older_than_the_ttl(
    redis_client: redis.Redis, client: str
) -> None:
    ttl_s = 100
    pipe = redis_client.pipeline(transaction=True)
    add_to_indexes(pipe, f"{client}-expired", client, START, ttl_s)
    add_to_indexes(pipe, f"{client}-young", client, START + 60, ttl_s)
    pipe.execute()

    pipe = redis_client.pipeline(transaction=True)
    add_to_indexes(pipe, f"{client}-new", client, START + 150, ttl_s)
    pipe.execute()

    for key in (client_jobs(client), ALL_JOBS):
        assert redis_client.zscore(key, f"{client}-expired") is None
        assert redis_client.zscore(key, f"{client}-young") == START + 60
        assert redis_client.zscore(key, f"{client}-new") == START + 150


def test_jobs_created_at_the_same_instant_are_never_skipped_at_a_page_boundary(
    redis_client: redis.Redis,
) -> None:
    key = f"imgq:test:ties:{uuid.uuid4().hex}"
    ids = [uuid.uuid4().hex for _ in range(5)]
    redis_client.zadd(key, {job_id: 5.0 for job_id in ids[:4]} | {ids[4]: 4.0})
    try:
        listed, cursor = [], None
        while True:
            page = page_of_ids(redis_client, key, 2, cursor, lambda batch: batch)
            listed.extend(page.job_ids)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert listed == [*sorted(ids[:4], reverse=True), ids[4]]
    finally:
        redis_client.delete(key)
