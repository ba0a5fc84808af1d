"""The reaper's safety net for predict jobs: overdue jobs are requeued once, then failed.

Celery redelivers the messages of a worker that died; these tests cover what redelivery cannot:
messages that are simply gone (as after a Redis that lost its last second of writes).
"""

from __future__ import annotations

import pytest
import redis

from imgq.jobs import JobStore, new_job_id, record_key
from imgq.queueing import PREDICT_QUEUE, make_celery
from imgq.settings import Settings
from tests.conftest import Service, wait_for_job

pytestmark = pytest.mark.e2e


def _lost_job(settings: Settings, redis_client: redis.Redis, image: bytes) -> str:
    """A predict job stored as the API stores it, whose messages were never sent."""
    job_id = new_job_id()
    JobStore(redis_client, settings.job_ttl_s).create_predict_job(
        job_id, [image, image], "imagenet", None, 3, client="admin", deadline_s=1
    )
    return job_id


def test_a_job_whose_messages_were_lost_is_requeued_and_completes(
    api_server: str,
    settings: Settings,
    redis_client: redis.Redis,
    predict_worker: Service,
    webhooks_worker: Service,
    cat_jpeg: bytes,
) -> None:
    job_id = _lost_job(settings, redis_client, cat_jpeg)
    document = wait_for_job(api_server, job_id, timeout_s=60)
    assert document["status"] == "succeeded", document
    assert [p[0]["index"] for p in document["result"]["predictions"]] == [285, 285]
    assert redis_client.hget(record_key(job_id), "requeues") == b"1"


def test_a_job_that_stays_stuck_after_its_requeue_fails_with_a_clear_code(
    api_server: str,
    settings: Settings,
    redis_client: redis.Redis,
    predict_worker: Service,
    webhooks_worker: Service,
    cat_jpeg: bytes,
) -> None:
    control = make_celery(settings).control
    # No worker takes predictions for a while: the requeued images are not run either.
    assert control.cancel_consumer(PREDICT_QUEUE, destination=[predict_worker.node], reply=True)
    try:
        job_id = _lost_job(settings, redis_client, cat_jpeg)
        document = wait_for_job(api_server, job_id, timeout_s=60)
    finally:
        assert control.add_consumer(PREDICT_QUEUE, destination=[predict_worker.node], reply=True)
    assert document["status"] == "failed", document
    assert document["error"]["code"] == "deadline_exceeded"
    assert redis_client.hget(record_key(job_id), "requeues") == b"1"
