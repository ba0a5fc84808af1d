"""Celery configuration as data, shared by the API (which only sends) and the workers.

The API builds a Celery app from this module and sends tasks by *name*, so the web process never
imports the worker modules that load TensorFlow.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any

from celery import Celery
from kombu import Queue
from kombu.utils.uuid import uuid

from imgq.broker import RedisCommand, captured_publishes, transport_for
from imgq.redis_client import kombu_broker
from imgq.settings import Settings

PREDICT_QUEUE = "predict"
"""Queue of per-image prediction messages, consumed by prediction workers."""
TRAIN_QUEUE = "train"
"""Queue of fine-tune (and later export) jobs, consumed by training workers."""
WEBHOOKS_QUEUE = "webhooks"
"""Queue of webhook deliveries."""


class WorkerKind(StrEnum):
    """The three kinds of worker; each consumes its own queue and imports only its own tasks."""

    PREDICT = "predict"
    """Batched predictions and explanations; keeps models loaded (``--pool threads``)."""
    TRAIN = "train"
    """Fine-tunes and exports (``--pool prefork``, TensorFlow only in the child)."""
    WEBHOOKS = "webhooks"
    """Webhook deliveries, their scheduler and the reaper (``--pool threads``)."""

    @property
    def queue(self) -> str:
        """The queue this kind consumes."""
        return {
            WorkerKind.PREDICT: PREDICT_QUEUE,
            WorkerKind.TRAIN: TRAIN_QUEUE,
            WorkerKind.WEBHOOKS: WEBHOOKS_QUEUE,
        }[self]

    @property
    def app_module(self) -> str:
        """The module ``celery -A`` names to start this kind (``workers/<kind>_worker.py``)."""
        return f"workers.{self.value}_worker"


PREDICT_IMAGE_TASK = "imgq.predict_image"
"""A job's images: ``(job_id, index)`` for one, ``(job_id, [index, ...])`` for several (see
``message_images``); the worker batches messages of many jobs together."""
EXPLAIN_TASK = "imgq.explain"
"""A whole predict job with Grad-CAM explanations: ``(job_id,)``, outside the batches."""
DELIVER_WEBHOOK_TASK = "imgq.webhooks.deliver"
"""One delivery attempt of a job's webhook: ``(job_id,)``."""
EXPORT_TASK = "imgq.train.export"
"""One message per export job: ``(job_id,)``; runs on training workers."""
FINETUNE_TASK = "imgq.train.finetune"
"""One message per fine-tune job: ``(job_id,)``."""
INGEST_TASK = "imgq.train.ingest"
"""One message per ingest job (an upload stored as a dataset version): ``(job_id,)``."""


def celery_config(settings: Settings) -> dict[str, Any]:
    """Return the Celery settings every imgq process shares."""
    transport_options: dict[str, Any] = {
        # Redis has no real acks: a message a worker took stays in an "unacked" hash and is
        # handed out again after this many seconds. It must exceed the longest time a message
        # is held unacknowledged, and Celery reads it from both option dicts.
        "visibility_timeout": settings.visibility_timeout_s,
        # Sweep for expired unacked messages every interval (throttle 1: every call scans).
        "unacked_restore_interval": settings.unacked_restore_interval_s,
        "unacked_restore_throttle": 1,
        # One worker at a time sweeps, under a Redis mutex. kombu holds it for 5 minutes if
        # its holder dies mid-sweep (a SIGKILLed worker), which would stall every restore that
        # long; a sweep takes milliseconds, and two at once are harmless (each restore is a
        # WATCHed transaction), so it expires after a couple of intervals instead.
        "unacked_mutex_expire": max(10, 2 * settings.unacked_restore_interval_s),
    }
    # imgq's one Sentinel URL becomes kombu's form: one sentinel:// per sentinel, the master's
    # name in the transport options (imgq.redis_client).
    broker_url, sentinel_options = kombu_broker(settings.celery_broker_url)
    transport_options.update(sentinel_options)
    return {
        "broker_url": broker_url,
        # kombu's Redis transport with one client per pool and batched acks (imgq.broker).
        "broker_transport": transport_for(broker_url),
        "broker_transport_options": transport_options,
        "result_backend_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # JSON only: a pickle from the queue would run code in the worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # The job record in Redis is the result; Celery's result backend stays unused.
        "task_ignore_result": True,
        # Ack after the work is stored, and give the message back if the worker process dies,
        # so an accepted job survives a crash (at-least-once; job records make it effectively-once).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_queues": [Queue(PREDICT_QUEUE), Queue(TRAIN_QUEUE), Queue(WEBHOOKS_QUEUE)],
        "task_default_queue": PREDICT_QUEUE,
        "task_routes": {
            PREDICT_IMAGE_TASK: {"queue": PREDICT_QUEUE},
            "imgq.train.*": {"queue": TRAIN_QUEUE},
            "imgq.webhooks.*": {"queue": WEBHOOKS_QUEUE},
        },
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "timezone": "UTC",
    }


def make_celery(settings: Settings) -> Celery:
    """A Celery app that only sends (the API, the supervisor); workers use ``make_worker_app``."""
    app = Celery("imgq")
    app.conf.update(celery_config(settings))
    return app


def message_images(args: Sequence[Any]) -> list[tuple[str, int]]:
    """``(job_id, index)`` of each image a predict message carries: its arguments are
    ``[job_id, index]`` or ``[job_id, [index, ...]]``."""
    job_id, indices = str(args[0]), args[1]
    if isinstance(indices, list):
        return [(job_id, int(index)) for index in indices]
    return [(job_id, int(indices))]


def send_predict_messages(
    celery: Celery, job_id: str, indices: Iterable[int], *, explain: bool
) -> None:
    """Queue a predict job's work: one message for the given image indices, or for an
    explained job one message for the whole job (explanations stay out of the batched path).

    The reaper sends a job's lost images this way, and the API a new job's when it cannot
    queue them in the job's own transaction (``predict_message_commands``). One message per
    job, not per image: a worker's cost is mostly per message (kombu's delivery and ack
    bookkeeping), and a job's images are wanted together anyway. The message is Celery's own
    (``app.amqp.create_task_message``), sent on the anonymous exchange straight to the predict
    queue, which needs no declaring, with its ``argsrepr`` given (Celery would otherwise
    ``saferepr`` the arguments): about half of what ``send_task`` costs.
    """
    if explain:
        with celery.producer_or_acquire() as producer, producer.batch():
            celery.send_task(EXPLAIN_TASK, args=[job_id], queue=PREDICT_QUEUE, producer=producer)
        return
    wanted = list(indices)
    if not wanted:
        return
    args: list[Any] = [job_id, wanted[0] if len(wanted) == 1 else wanted]
    amqp = celery.amqp
    message = amqp.create_task_message(
        uuid(), PREDICT_IMAGE_TASK, args, {}, argsrepr=repr(args), kwargsrepr="{}"
    )
    with celery.producer_or_acquire() as producer, producer.batch():
        amqp.send_task_message(
            producer, PREDICT_IMAGE_TASK, message, queue=PREDICT_QUEUE, declare=[]
        )


def predict_message_commands(
    celery: Celery, job_id: str, indices: Iterable[int], *, explain: bool
) -> list[RedisCommand]:
    """The Redis commands that would queue ``send_predict_messages``' message, unsent, for
    the caller to run in its own transaction on the broker's Redis (``imgq.broker``)."""
    with captured_publishes() as commands:
        send_predict_messages(celery, job_id, indices, explain=explain)
    return list(commands)


def can_queue_in_transaction(settings: Settings) -> bool:
    """Whether a job's messages can be queued in the job store's own transaction: the broker
    is the job store's Redis (same URL), on ``imgq.broker``'s transport."""
    return (
        settings.celery_broker_url == settings.redis_url
        and transport_for(kombu_broker(settings.celery_broker_url)[0]) is not None
    )
