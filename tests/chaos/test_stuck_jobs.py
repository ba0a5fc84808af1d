"""The reaper's safety net for predict jobs: lost images are sent again, overdue jobs fail.

Celery redelivers the messages of a worker that died holding them; these tests cover what
redelivery cannot: a message that is simply gone (kombu loses one when a worker dies between
taking it off the queue and recording it as unacknowledged), and a job nothing will ever run.
The session's webhooks worker is the reaper; jobs are stored here as the API stores them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from imgq.jobs.predict_images import ImageResult, PredictImages
from imgq.jobs.store import JobStore, new_job_id
from imgq.local.supervisor import Service
from imgq.queueing import PREDICT_IMAGE_TASK, PREDICT_QUEUE, make_celery
from imgq.redis_keys import job_record
from imgq.settings import Settings
from ml.registry import BUILTIN_MODEL_ID
from tests.support.http import wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("predict_worker", "webhooks_worker")]

CAT = 285


def _store_job(
    settings: Settings,
    client: redis.Redis,
    images: list[bytes],
    *,
    deadline_s: float = 60,
    explain: bool = False,
) -> str:
    """A predict job stored as the API stores it, first checked by the reaper at once."""
    job_id = new_job_id()
    JobStore(client, settings.job_ttl_s).create_predict_job(
        job_id,
        images,
        BUILTIN_MODEL_ID,
        None,
        3,
        client="admin",
        deadline_s=deadline_s,
        check_after_s=0.2,
        explain=explain,
    )
    return job_id


@pytest.fixture
def predictions_paused(settings: Settings, predict_worker: Service) -> Iterator[None]:
    """The session's prediction worker takes no messages for the test's duration."""
    control = make_celery(settings).control
    assert control.cancel_consumer(PREDICT_QUEUE, destination=[predict_worker.node], reply=True)
    yield
    assert control.add_consumer(PREDICT_QUEUE, destination=[predict_worker.node], reply=True)


def test_only_the_images_whose_messages_were_lost_are_sent_again(
    api_server: str, settings: Settings, redis_client: redis.Redis, cat_jpeg: bytes
) -> None:
    job_id = _store_job(settings, redis_client, [cat_jpeg, cat_jpeg])
    stored = [{"label": "stored before the loss", "index": 0, "score": 1.0}]
    PredictImages(redis_client, settings.job_ttl_s).store(
        "imagenet", 1, [ImageResult(job_id, 0, stored)]
    )
    # No message was ever sent: image 1's is "lost", image 0 already has its result.
    document = wait_for_job(api_server, job_id, timeout_s=60)
    assert document["status"] == "succeeded", document
    first, second = document["result"]["predictions"]
    assert first == stored  # not run again
    assert second[0]["index"] == CAT
    assert redis_client.hget(job_record(job_id), "requeues") == b"1"


def test_an_explained_job_whose_message_was_lost_is_sent_again_whole(
    api_server: str, settings: Settings, redis_client: redis.Redis, cat_jpeg: bytes
) -> None:
    job_id = _store_job(settings, redis_client, [cat_jpeg], explain=True)
    document = wait_for_job(api_server, job_id, timeout_s=60)
    assert document["status"] == "succeeded", document
    assert document["result"]["predictions"][0][0]["index"] == CAT
    assert document["result"]["explanations"][0]["artifact"] == "gradcam-0.png"
    assert redis_client.hget(job_record(job_id), "requeues") == b"1"


@pytest.mark.usefixtures("predictions_paused")
def test_images_still_queued_are_not_sent_again(
    settings: Settings, redis_client: redis.Redis, cat_jpeg: bytes
) -> None:
    job_id = _store_job(settings, redis_client, [cat_jpeg])
    make_celery(settings).send_task(PREDICT_IMAGE_TASK, args=[job_id, 0], queue=PREDICT_QUEUE)
    time.sleep(2)  # the reaper (1 s sweeps) has looked at the job more than once
    assert redis_client.hget(job_record(job_id), "status") == b"queued"
    assert redis_client.hget(job_record(job_id), "requeues") is None
    assert redis_client.llen(PREDICT_QUEUE) == 1


@pytest.mark.usefixtures("predictions_paused")
def test_a_job_still_open_at_its_deadline_fails_with_a_clear_code(
    api_server: str, settings: Settings, redis_client: redis.Redis, cat_jpeg: bytes
) -> None:
    job_id = _store_job(settings, redis_client, [cat_jpeg], deadline_s=1)
    document = wait_for_job(api_server, job_id, timeout_s=60)
    assert document["status"] == "failed", document
    assert document["error"]["code"] == "deadline_exceeded"
