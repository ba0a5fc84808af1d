"""Job records against a real Redis: transitions happen once, whatever order workers race in."""

from __future__ import annotations

import redis

from imgq.errors import InvalidImage
from imgq.jobs.predict_images import ImageResult, PredictImages
from imgq.jobs.registries import PredictChecks
from imgq.jobs.status import JobStatus
from imgq.jobs.store import JobStore, new_job_id
from imgq.redis_keys import REDUNDANT_RESULTS, job_images, job_record
from imgq.settings import Settings


class Stores:
    """The record store and the per-image store over one Redis, as a worker has them."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.jobs = JobStore(client, ttl_s)
        self.images = PredictImages(client, ttl_s)
        self.checks = PredictChecks(client)

    def store(self, *results: tuple[str, int, list[dict[str, object]]]) -> list[float]:
        """Store image results of the test model's version 1."""
        return self.images.store("imagenet", 1, [ImageResult(*r) for r in results])


def _store(
    settings: Settings, client: redis.Redis, *, check_after_s: float = 60
) -> tuple[Stores, str]:
    stores = Stores(client, settings.job_ttl_s)
    store = stores.jobs
    job_id = new_job_id()
    store.create_predict_job(
        job_id,
        [b"a", b"b"],
        "imagenet",
        1,
        top_k=1,
        client="alice",
        deadline_s=60,
        check_after_s=check_after_s,
    )
    return stores, job_id


def _top(label: str) -> list[dict[str, object]]:
    return [{"label": label, "index": 0, "score": 1.0}]


def test_new_job_is_queued_with_a_ttl(settings: Settings, redis_client: redis.Redis) -> None:
    store, job_id = _store(settings, redis_client)
    document = store.jobs.get(job_id)
    assert document is not None
    assert document["status"] == JobStatus.QUEUED
    assert document["result"] is None and document["started_at"] is None
    assert 0 < redis_client.ttl(job_record(job_id)) <= settings.job_ttl_s
    assert 0 < redis_client.ttl(job_images(job_id)) <= settings.job_ttl_s


def test_job_succeeds_only_when_its_last_image_is_stored(
    settings: Settings, redis_client: redis.Redis
) -> None:
    store, job_id = _store(settings, redis_client)
    store.jobs.mark_running([job_id])
    assert store.store((job_id, 1, _top("second"))) == []
    running = store.jobs.get(job_id)
    assert running is not None and running["status"] == JobStatus.RUNNING
    assert len(store.store((job_id, 0, _top("first")))) == 1
    document = store.jobs.get(job_id)
    assert document is not None
    assert document["status"] == JobStatus.SUCCEEDED
    assert [p[0]["label"] for p in document["result"]["predictions"]] == ["first", "second"]
    assert not redis_client.exists(job_images(job_id))  # payload freed once done


def test_redelivered_images_cannot_change_a_stored_result(
    settings: Settings, redis_client: redis.Redis
) -> None:
    store, job_id = _store(settings, redis_client)
    store.store((job_id, 0, _top("first")), (job_id, 0, _top("other")))
    store.store((job_id, 1, _top("second")))
    before = store.jobs.get(job_id)
    assert store.store((job_id, 1, _top("late duplicate"))) == []
    assert store.jobs.get(job_id) == before
    assert before is not None
    assert before["result"]["predictions"][0][0]["label"] == "first"


def test_redelivered_results_are_counted_as_redundant(
    settings: Settings, redis_client: redis.Redis
) -> None:
    store, job_id = _store(settings, redis_client)
    before = int(redis_client.get(REDUNDANT_RESULTS) or 0)
    store.store((job_id, 0, _top("first")))
    store.store((job_id, 0, _top("again")))  # not stored: counted
    store.store((job_id, 1, _top("second")))  # completes the job
    store.store((job_id, 1, _top("late")))  # job over: counted
    assert int(redis_client.get(REDUNDANT_RESULTS) or 0) - before == 2


def test_a_failed_job_stays_failed(settings: Settings, redis_client: redis.Redis) -> None:
    store, job_id = _store(settings, redis_client)
    error = InvalidImage("bad")
    assert store.jobs.fail(job_id, error) is True
    assert store.jobs.fail(job_id, InvalidImage("x")) is False
    store.store((job_id, 0, _top("a")), (job_id, 1, _top("b")))
    document = store.jobs.get(job_id)
    assert document is not None
    assert document["status"] == JobStatus.FAILED
    assert document["error"] == {"code": "invalid_image", "message": "bad"}
    assert document["result"] is None


def test_finished_jobs_are_not_offered_to_workers_again(
    settings: Settings, redis_client: redis.Redis
) -> None:
    store, job_id = _store(settings, redis_client)
    store.jobs.fail(job_id, InvalidImage("y"))
    assert store.images.targets([job_id, "missing"]) == {job_id: None, "missing": None}


def test_open_jobs_are_checked_once_per_interval_and_only_until_they_end(
    settings: Settings, redis_client: redis.Redis
) -> None:
    store, open_job = _store(settings, redis_client, check_after_s=-1)
    _, ended = _store(settings, redis_client, check_after_s=-1)
    store.jobs.fail(ended, InvalidImage("x"))  # ending unwatches it
    store.store((open_job, 0, _top("first")))
    claimed = store.checks.claim_due()
    assert open_job in claimed and ended not in claimed
    assert open_job not in store.checks.claim_due()  # a second reaper gets nothing
    assert store.images.missing(open_job) == [1]
    store.checks.check_again(open_job, 60, resent=1)
    assert open_job not in store.checks.claim_due()  # watched again, not yet due
    assert redis_client.hget(job_record(open_job), "requeues") == b"1"
