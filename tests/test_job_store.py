"""Job records against a real Redis: transitions happen once, whatever order workers race in."""

from __future__ import annotations

import redis

from imgq.job_scripts import REDUNDANT_RESULTS
from imgq.jobs import JobStatus, JobStore, images_key, new_job_id, record_key
from imgq.settings import Settings


def _store(
    settings: Settings, client: redis.Redis, *, check_after_s: float = 60
) -> tuple[JobStore, str]:
    store = JobStore(client, ttl_s=settings.job_ttl_s)
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
    return store, job_id


def _top(label: str) -> list[dict[str, object]]:
    return [{"label": label, "index": 0, "score": 1.0}]


def test_new_job_is_queued_with_a_ttl(settings: Settings, redis_client: redis.Redis) -> None:
    store, job_id = _store(settings, redis_client)
    document = store.get(job_id)
    assert document is not None
    assert document["status"] == JobStatus.QUEUED
    assert document["result"] is None and document["started_at"] is None
    assert 0 < redis_client.ttl(record_key(job_id)) <= settings.job_ttl_s
    assert 0 < redis_client.ttl(images_key(job_id)) <= settings.job_ttl_s


def test_job_succeeds_only_when_its_last_image_is_stored(
    settings: Settings, redis_client: redis.Redis
) -> None:
    store, job_id = _store(settings, redis_client)
    store.mark_running([job_id])
    assert store.store_predictions([(job_id, 1, _top("second"))]) == []
    running = store.get(job_id)
    assert running is not None and running["status"] == JobStatus.RUNNING
    assert len(store.store_predictions([(job_id, 0, _top("first"))])) == 1
    document = store.get(job_id)
    assert document is not None
    assert document["status"] == JobStatus.SUCCEEDED
    assert [p[0]["label"] for p in document["result"]["predictions"]] == ["first", "second"]
    assert not redis_client.exists(images_key(job_id))  # payload freed once done


def test_redelivered_images_cannot_change_a_stored_result(
    settings: Settings, redis_client: redis.Redis
) -> None:
    store, job_id = _store(settings, redis_client)
    store.store_predictions([(job_id, 0, _top("first")), (job_id, 0, _top("other"))])
    store.store_predictions([(job_id, 1, _top("second"))])
    before = store.get(job_id)
    assert store.store_predictions([(job_id, 1, _top("late duplicate"))]) == []
    assert store.get(job_id) == before
    assert before is not None
    assert before["result"]["predictions"][0][0]["label"] == "first"


def test_redelivered_results_are_counted_as_redundant(
    settings: Settings, redis_client: redis.Redis
) -> None:
    store, job_id = _store(settings, redis_client)
    before = int(redis_client.get(REDUNDANT_RESULTS) or 0)
    store.store_predictions([(job_id, 0, _top("first"))])
    store.store_predictions([(job_id, 0, _top("again"))])  # not stored: counted
    store.store_predictions([(job_id, 1, _top("second"))])  # completes the job
    store.store_predictions([(job_id, 1, _top("late"))])  # job over: counted
    assert int(redis_client.get(REDUNDANT_RESULTS) or 0) - before == 2


def test_a_failed_job_stays_failed(settings: Settings, redis_client: redis.Redis) -> None:
    store, job_id = _store(settings, redis_client)
    error = {"code": "invalid_image", "message": "bad"}
    assert store.fail(job_id, error) is True
    assert store.fail(job_id, {"code": "other", "message": "x"}) is False
    store.store_predictions([(job_id, 0, _top("a")), (job_id, 1, _top("b"))])
    document = store.get(job_id)
    assert document is not None
    assert document["status"] == JobStatus.FAILED
    assert document["error"] == error
    assert document["result"] is None


def test_finished_jobs_are_not_offered_to_workers_again(
    settings: Settings, redis_client: redis.Redis
) -> None:
    store, job_id = _store(settings, redis_client)
    store.fail(job_id, {"code": "x", "message": "y"})
    assert store.predict_targets([job_id, "missing"]) == {job_id: None, "missing": None}


def test_open_jobs_are_checked_once_per_interval_and_only_until_they_end(
    settings: Settings, redis_client: redis.Redis
) -> None:
    store, open_job = _store(settings, redis_client, check_after_s=-1)
    _, ended = _store(settings, redis_client, check_after_s=-1)
    store.fail(ended, {"code": "invalid_image", "message": "x"})  # ending unwatches it
    store.store_predictions([(open_job, 0, _top("first"))])
    claimed = store.claim_due_checks()
    assert open_job in claimed and ended not in claimed
    assert open_job not in store.claim_due_checks()  # a second reaper gets nothing
    assert store.missing_images(open_job) == [1]
    store.check_again(open_job, 60, requeued=1)
    assert open_job not in store.claim_due_checks()  # watched again, not yet due
    assert redis_client.hget(record_key(open_job), "requeues") == b"1"
