"""``pending_work``: predict messages found in a queue list and in kombu's unacked hash.

Messages are real: ``send_predict_messages`` sends them through a Celery app whose kombu
transport prefixes every key with a prefix unique to the test (``global_keyprefix``), so the
``predict`` list they land in is the test's own and no worker of the session consumes it. A
worker holding a message is imitated the way kombu's Redis transport does it: the message is
popped from the list and stored under its delivery tag in the real unacked hash, which may hold
other messages too, so assertions look only at the test's own job ids.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis
from celery import Celery

from imgq.jobs.queued_messages import PendingWork, pending_work
from imgq.queueing import (
    DELIVER_WEBHOOK_TASK,
    FINETUNE_TASK,
    PREDICT_IMAGE_TASK,
    PREDICT_QUEUE,
    make_celery,
    send_predict_messages,
)
from imgq.redis_keys import KOMBU_UNACKED
from imgq.settings import Settings

SCAN_LIMIT = 100


@dataclass
class Broker:
    """A Celery app sending into keys of the test's own, and the messages it moved to unacked."""

    celery: Celery
    redis: redis.Redis
    prefix: str
    held_tags: list[str] = field(default_factory=list)

    @property
    def queue(self) -> str:
        """The Redis list that holds the test's ``predict`` queue."""
        return f"{self.prefix}{PREDICT_QUEUE}"

    def hold_oldest(self) -> None:
        """Do what a worker's kombu does on taking a message: pop it, record it as unacked."""
        raw = self.redis.rpop(self.queue)
        assert isinstance(raw, bytes), "the queue is empty"
        message = json.loads(raw)
        tag = str(message["properties"]["delivery_tag"])
        delivery = message["properties"]["delivery_info"]
        entry = [message, delivery["exchange"], delivery["routing_key"]]
        self.redis.hset(KOMBU_UNACKED, tag, json.dumps(entry))
        self.held_tags.append(tag)

    def work_of(self, job_id: str, scan_limit: int = SCAN_LIMIT) -> PendingWork:
        """``pending_work`` narrowed to one job (the unacked hash is shared)."""
        work = pending_work(self.redis, self.queue, scan_limit)
        assert work is not None
        return PendingWork(
            {image for image in work.images if image[0] == job_id},
            {job for job in work.explained_jobs if job == job_id},
        )


@pytest.fixture
def broker(settings: Settings, redis_client: redis.Redis) -> Iterator[Broker]:
    """A sending Celery app on keys of the test's own; they and its unacked entries go after."""
    prefix = f"imgq-unit-{uuid.uuid4().hex}:"
    celery = make_celery(settings)
    celery.conf.broker_transport_options = {
        **celery.conf.broker_transport_options,
        "global_keyprefix": prefix,
    }
    broker = Broker(celery, redis_client, prefix)
    yield broker
    celery.close()
    if broker.held_tags:
        redis_client.hdel(KOMBU_UNACKED, *broker.held_tags)
    leftovers = list(redis_client.scan_iter(match=f"{prefix}*"))
    if leftovers:
        redis_client.delete(*leftovers)


def _job_id() -> str:
    return str(uuid.uuid4())


def test_queued_predict_image_messages_are_found_by_job_and_index(broker: Broker) -> None:
    job_id = _job_id()

    send_predict_messages(broker.celery, job_id, [0, 1, 2], explain=False)

    assert broker.work_of(job_id) == PendingWork({(job_id, 0), (job_id, 1), (job_id, 2)}, set())


def test_kombu_stores_bodies_base64_encoded_and_they_are_decoded(broker: Broker) -> None:
    job_id = _job_id()
    send_predict_messages(broker.celery, job_id, [7], explain=False)

    (raw,) = broker.redis.lrange(broker.queue, 0, -1)

    assert json.loads(raw)["properties"]["body_encoding"] == "base64"
    assert broker.work_of(job_id).images == {(job_id, 7)}


def test_a_queued_explain_message_is_found_by_job(broker: Broker) -> None:
    job_id = _job_id()

    send_predict_messages(broker.celery, job_id, [0, 1], explain=True)

    assert broker.work_of(job_id) == PendingWork(set(), {job_id})


def test_messages_a_worker_holds_unacknowledged_are_found_too(broker: Broker) -> None:
    job_id = _job_id()
    send_predict_messages(broker.celery, job_id, [0, 1], explain=False)
    send_predict_messages(broker.celery, job_id, [2], explain=False)
    send_predict_messages(broker.celery, job_id, [], explain=True)

    for _ in range(2):
        broker.hold_oldest()

    assert broker.redis.llen(broker.queue) == 1
    assert broker.work_of(job_id) == PendingWork({(job_id, 0), (job_id, 1), (job_id, 2)}, {job_id})


def test_an_explain_message_held_unacknowledged_is_found(broker: Broker) -> None:
    job_id = _job_id()
    send_predict_messages(broker.celery, job_id, [], explain=True)

    broker.hold_oldest()

    assert broker.redis.llen(broker.queue) == 0
    assert broker.work_of(job_id) == PendingWork(set(), {job_id})


def test_messages_of_other_tasks_are_ignored(broker: Broker) -> None:
    job_id = _job_id()
    broker.celery.send_task(DELIVER_WEBHOOK_TASK, args=[job_id], queue=PREDICT_QUEUE)
    broker.celery.send_task(FINETUNE_TASK, args=[job_id], queue=PREDICT_QUEUE)
    broker.hold_oldest()

    assert broker.redis.llen(broker.queue) == 1
    assert broker.work_of(job_id) == PendingWork()


def test_a_job_s_images_travel_in_one_message(broker: Broker) -> None:
    job_id = _job_id()
    send_predict_messages(broker.celery, job_id, [0, 1, 2], explain=False)

    (raw,) = broker.redis.lrange(broker.queue, 0, -1)

    assert json.loads(raw)["headers"]["argsrepr"] == repr([job_id, [0, 1, 2]])


def test_a_queue_longer_than_the_scan_limit_is_not_scanned(broker: Broker) -> None:
    job_id = _job_id()
    for index in range(3):
        send_predict_messages(broker.celery, job_id, [index], explain=False)

    assert pending_work(broker.redis, broker.queue, scan_limit=2) is None
    assert broker.work_of(job_id, scan_limit=3).images == {(job_id, 0), (job_id, 1), (job_id, 2)}


def test_a_message_body_without_base64_encoding_is_read_as_is() -> None:
    job_id = _job_id()
    body = json.dumps([[job_id, 4], {}, {}])
    work = PendingWork()

    work.add({"body": body, "headers": {"task": PREDICT_IMAGE_TASK}, "properties": {}})
    work.add(
        {
            "body": base64.b64encode(json.dumps([[job_id, 5], {}, {}]).encode()).decode(),
            "headers": {"task": PREDICT_IMAGE_TASK},
            "properties": {"body_encoding": "base64"},
        }
    )

    assert work.images == {(job_id, 4), (job_id, 5)}
