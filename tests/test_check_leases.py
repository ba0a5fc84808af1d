"""Predict checks are leased, not taken, against a real Redis: a reaper that dies mid-sweep
loses no job, and reapers side by side never check the same job twice within a lease."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from imgq.errors import InvalidImage
from imgq.jobs.queued_messages import pending_work
from imgq.jobs.registries import PredictChecks
from imgq.jobs.store import JobStore, new_job_id
from imgq.redis_keys import PREDICT_CHECKS, job_record
from imgq.settings import Settings
from workers import reaper
from workers.context import WorkerContext

_DB = 13
"""A database of the session's Redis of these tests' own: the checks key is global."""


@pytest.fixture
def own_settings(settings: Settings) -> Settings:
    """The session's settings on a database of its own, with one-second check intervals."""
    url = settings.redis_url.rsplit("/", 1)[0] + f"/{_DB}"
    return settings.model_copy(update={"redis_url": url, "predict_check_interval_s": 1})


@pytest.fixture
def client(own_settings: Settings) -> Iterator[redis.Redis]:
    """A client of the empty database."""
    client = redis.Redis.from_url(own_settings.redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def _open_job(client: redis.Redis, *, check_after_s: float = -1) -> str:
    job_id = new_job_id()
    JobStore(client, 3600).create_predict_job(
        job_id,
        [b"a"],
        "imagenet",
        1,
        top_k=1,
        client="alice",
        deadline_s=600,
        check_after_s=check_after_s,
    )
    return job_id


def test_a_claimed_job_never_checked_again_is_due_again_after_the_lease(
    client: redis.Redis,
) -> None:
    checks = PredictChecks(client)
    job = _open_job(client)
    assert checks.claim_due(lease_s=0.5) == [job]
    assert checks.claim_due(lease_s=0.5) == []  # leased: nobody else gets it meanwhile
    assert client.zscore(PREDICT_CHECKS, job) is not None  # still watched, only later
    time.sleep(0.6)  # the claimer "died": no check_again, no forget
    assert checks.claim_due(lease_s=0.5) == [job]


def test_concurrent_claimers_never_get_the_same_job_within_a_lease(
    client: redis.Redis, own_settings: Settings
) -> None:
    pipe = client.pipeline(transaction=False)
    jobs = {f"job-{i}" for i in range(500)}
    for job in jobs:
        PredictChecks.schedule(pipe, job, time.time() - 1)
    pipe.execute()
    start = threading.Barrier(8)
    claims: list[list[str]] = [[] for _ in range(8)]

    def claim(mine: list[str]) -> None:
        checks = PredictChecks(redis.Redis.from_url(own_settings.redis_url))
        start.wait()
        while batch := checks.claim_due(limit=7, lease_s=60):
            mine.extend(batch)

    threads = [threading.Thread(target=claim, args=(mine,)) for mine in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    claimed = [job for mine in claims for job in mine]
    assert len(claimed) == len(set(claimed))  # no job went to two claimers
    assert set(claimed) == jobs  # and every due job went to one
    assert sum(1 for mine in claims if mine) > 1  # the claimers did race
    assert client.zcard(PREDICT_CHECKS) == len(jobs)  # all still watched, under lease


def test_the_normal_path_reschedules_and_an_ended_job_stays_out(client: redis.Redis) -> None:
    checks = PredictChecks(client)
    job, ended = _open_job(client), _open_job(client)
    assert sorted(checks.claim_due(lease_s=600)) == sorted([job, ended])
    checks.check_again(job, 60, resent=2)
    score = client.zscore(PREDICT_CHECKS, job)
    assert score is not None and abs(score - (time.time() + 60)) < 5  # the lease is replaced
    assert client.hget(job_record(job), "requeues") == b"2"
    checks.check_again(job, -1)
    assert checks.claim_due() == [job]  # due again on the normal schedule
    JobStore(client, 3600).fail(ended, InvalidImage("x"))  # ending unwatches it...
    checks.check_again(ended, 60)  # ...and a reaper finishing its check late does not rewatch it
    assert client.zscore(PREDICT_CHECKS, ended) is None
    checks.forget(job)
    assert client.zcard(PREDICT_CHECKS) == 0


def test_a_reaper_dying_mid_sweep_loses_no_job(
    client: redis.Redis, own_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = WorkerContext.build(own_settings, serves_models=False)
    job = _open_job(client)  # stored with no message: the message is lost
    sent: list[tuple[str, list[int]]] = []
    monkeypatch.setattr(
        reaper, "send_predict_messages", lambda _, j, lost, **__: sent.append((j, lost))
    )

    def die(*_: object) -> None:
        raise redis.ConnectionError("the reaper lost Redis between its claim and its check")

    monkeypatch.setattr(reaper, "pending_work", die)
    with pytest.raises(redis.ConnectionError):
        reaper.reap(None, context)  # type: ignore[arg-type]
    assert context.predict_checks.claim_due() == []  # leased for one check interval
    time.sleep(own_settings.predict_check_interval_s + 0.2)
    monkeypatch.setattr(reaper, "pending_work", pending_work)
    reaper.reap(None, context)  # type: ignore[arg-type]
    assert sent == [(job, [0])]  # the next reaper found the job, and resent its message
    assert client.hget(job_record(job), "requeues") == b"1"
    score = client.zscore(PREDICT_CHECKS, job)
    assert score is not None and score > time.time()  # watched again
    client.delete(job_record(job))  # a record gone (its TTL ran out): the next check drops it
    client.zadd(PREDICT_CHECKS, {job: time.time() - 1})
    reaper.reap(None, context)  # type: ignore[arg-type]
    assert client.zscore(PREDICT_CHECKS, job) is None
