"""``imgq.broker``: kombu's Redis transport with one client per pool and acks sent together.

Against the session's real Redis, on keys of the test's own (kombu's ``global_keyprefix``):
messages are published and taken with kombu itself, and the event loop is a real kombu
``Hub`` whose ready callbacks the test runs the way the worker's loop does, one turn at a time.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.asynchronous import Hub, get_event_loop, set_event_loop

from imgq.broker import Channel, Transport, captured_publishes, transport_for
from imgq.jobs.queued_messages import PendingWork, pending_work
from imgq.queueing import PREDICT_QUEUE, make_celery, predict_message_commands
from imgq.settings import Settings


@dataclass
class Broker:
    """A kombu connection on the test's own keys, and a queue on them."""

    connection: Connection
    redis: redis.Redis
    prefix: str
    queue: Queue

    @property
    def unacked(self) -> set[bytes | str]:
        """Delivery tags kombu holds as unacked (its hash, under the test's prefix)."""
        return set(self.redis.hkeys(f"{self.prefix}unacked"))

    def publish(self, count: int) -> None:
        """Queue ``count`` messages."""
        with self.connection.Producer() as producer:
            for index in range(count):
                producer.publish({"index": index}, routing_key=self.queue.name, declare=[])

    def take(self, count: int) -> list:  # type: ignore[type-arg]  # kombu messages are untyped
        """Take ``count`` messages the way a worker does: each is recorded as unacked."""
        bound = self.queue(self.connection.default_channel)
        messages = [bound.get(no_ack=False) for _ in range(count)]
        assert all(message is not None for message in messages)
        return messages


@pytest.fixture
def broker(settings: Settings, redis_client: redis.Redis) -> Iterator[Broker]:
    """A connection through ``imgq.broker.Transport`` on a fresh key prefix, removed after."""
    prefix = f"imgq-broker-{uuid.uuid4().hex}:"
    connection = Connection(
        settings.celery_broker_url,
        transport=transport_for(settings.celery_broker_url),
        transport_options={"global_keyprefix": prefix},
    )
    queue = Queue("work", Exchange("work", type="direct"), routing_key="work")
    yield Broker(connection, redis_client, prefix, queue)
    connection.release()
    leftovers = list(redis_client.scan_iter(match=f"{prefix}*"))
    if leftovers:
        redis_client.delete(*leftovers)


@pytest.fixture
def event_loop() -> Iterator[Hub]:
    """A kombu event loop as the worker's current one (Celery sets its own the same way)."""
    previous = get_event_loop()
    hub = Hub()
    set_event_loop(hub)
    yield hub
    set_event_loop(previous)
    hub.close()


def _ready(hub: Hub) -> set[Any]:
    """The callbacks scheduled for the loop's next turn (kombu's types hide them)."""
    loop: Any = hub
    return set(loop._ready)


def _run_ready(hub: Hub) -> None:
    """One turn of the loop: the callbacks scheduled so far."""
    loop: Any = hub
    for callback in loop._pop_ready():
        callback()


def test_redis_and_sentinel_urls_get_these_transports_and_others_are_left_to_kombu() -> None:
    assert transport_for("redis://127.0.0.1:6379/0") == "imgq.broker:Transport"
    assert transport_for("rediss://cache.example:6380/0") == "imgq.broker:Transport"
    assert transport_for("sentinel://10.0.0.1:26379") == "imgq.broker:SentinelTransport"
    assert transport_for("memory://") is None


def test_a_channel_builds_one_client_and_a_new_one_after_its_pool_is_reset(
    broker: Broker,
) -> None:
    channel: Any = broker.connection.default_channel
    assert isinstance(broker.connection.transport, Transport)
    assert isinstance(broker.connection.default_channel, Channel)

    first = channel._create_client()
    assert channel._create_client() is first
    channel._pool = None  # what kombu does after a fork or a lost connection
    assert channel._create_client() is not first


def test_without_an_event_loop_each_ack_goes_out_at_once(broker: Broker) -> None:
    assert get_event_loop() is None
    broker.publish(2)
    first, second = broker.take(2)
    assert len(broker.unacked) == 2

    first.ack()

    assert broker.unacked == {second.delivery_tag.encode()}


def test_acks_of_one_loop_turn_leave_redis_together_on_the_next(
    broker: Broker, event_loop: Hub
) -> None:
    broker.publish(3)
    messages = broker.take(3)

    for message in messages:
        message.ack()

    assert len(broker.unacked) == 3  # kombu's own bookkeeping is done; Redis not yet
    assert all(message.acknowledged for message in messages)
    assert len(_ready(event_loop)) == 1  # one callback for all three
    _run_ready(event_loop)
    assert broker.unacked == set()


def test_a_closing_channel_sends_its_queued_acks_and_restores_only_the_rest(
    broker: Broker, event_loop: Hub
) -> None:
    broker.publish(2)
    acked, held = broker.take(2)
    acked.ack()

    channel: Any = broker.connection.default_channel
    channel.close()  # a worker stopping cleanly

    assert broker.unacked == set()
    queued = broker.redis.llen(f"{broker.prefix}work")
    assert queued == 1  # the unacked one is back in the queue; the acked one is gone
    assert held.delivery_tag


def test_a_captured_publish_is_kombu_s_own_message_and_is_not_sent(
    settings: Settings, redis_client: redis.Redis
) -> None:
    job_id = uuid.uuid4().hex
    celery = make_celery(settings)
    try:
        commands = predict_message_commands(celery, job_id, [0, 1], explain=False)
    finally:
        celery.close()

    ((name, (key, payload)),) = commands
    assert (name, key) == ("lpush", PREDICT_QUEUE)
    work = PendingWork()
    work.add(json.loads(payload))  # what the reaper reads back from the queue
    assert work.images == {(job_id, 0), (job_id, 1)}
    queued = pending_work(redis_client, PREDICT_QUEUE, scan_limit=10_000)
    assert queued is not None and not {i for i in queued.images if i[0] == job_id}


def test_publishes_are_not_captured_under_a_key_prefix_kombu_would_add_later(
    broker: Broker,
) -> None:
    producer: Any = broker.connection.Producer()
    with (
        pytest.raises(ValueError, match="global_keyprefix"),
        captured_publishes(),
        producer.batch(),
    ):
        producer.publish({"index": 0}, routing_key=broker.queue.name, declare=[])
    assert broker.redis.llen(f"{broker.prefix}work") == 0
