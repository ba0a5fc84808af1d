"""kombu's Redis transport, made cheaper per message without changing what it stores.

Profiling a prediction worker under load (``bench/serving_path.py`` with ``py-spy``) found
half its Python time in kombu's ack emulation, for two reasons this module removes:

- every publish, delivery bookkeeping and ack built a new ``redis.Redis`` client object
  (``Channel._create_client``), whose constructor copies a table of some two hundred response
  callbacks; ``Channel`` here keeps one client per connection pool (a ``redis.Redis`` is
  thread-safe: each command borrows a pooled connection);
- each ack was its own round trip (``ZREM`` + ``HDEL`` of the unacked index and hash), run
  as its own callback on the worker's event loop; here an ack updates kombu's bookkeeping at
  once and queues the tag, and one callback scheduled on the same loop sends every queued tag
  in one pipeline: a batch's acks, which the loop runs together, cost one round trip.

Everything else is kombu's: the same keys, the same unacked hash and visibility timeout, the
same restore of unacked messages after a crash. A worker that dies between an ack and its
round trip has not acked, so those messages come back after the visibility timeout, as they
would have before (delivery stays at-least-once; job records make it effectively-once); a
worker that stops cleanly sends its queued acks first. Without an event loop (a plain kombu
consumer) acks go out one by one, as before.

It also lets a caller put a message's publish into its own Redis transaction
(``captured_publishes``): the API stores a predict job and queues its message in one
``MULTI``/``EXEC``, one round trip, and a job is never visible without its message or the
other way round. The message is kombu's own, prepared and routed by kombu; only the final
``LPUSH`` is handed to the caller instead of being sent.

``transport_for`` picks this transport for ``redis://`` and ``rediss://`` broker URLs, its
Sentinel twin (the same channel over kombu's Sentinel-managed pool) for kombu's
``sentinel://`` URLs, and leaves every other scheme to kombu.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import redis
from kombu.asynchronous import get_event_loop
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

logger = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    """Ack emulation whose acks, made on the worker's event loop, share one round trip."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queued_acks: list[str] = []
        self._queued_lock = threading.Lock()

    def ack(self, delivery_tag: str) -> None:
        """Acknowledge a delivered message: kombu's bookkeeping now, the Redis removal with
        the other acks of this turn of the event loop."""
        hub = get_event_loop()
        if hub is None:
            super().ack(delivery_tag)
            return
        with self._queued_lock:
            first = not self._queued_acks
            self._queued_acks.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)
        if first:
            hub.call_soon(self.send_queued_acks)

    def send_queued_acks(self) -> None:
        """Remove every queued ack's message from the unacked index and hash, pipelined."""
        with self._queued_lock:
            tags, self._queued_acks = self._queued_acks, []
        if not tags:
            return
        try:
            with self.pipe_or_acquire() as pipe:
                pipe.zrem(self.unacked_index_key, *tags)
                pipe.hdel(self.unacked_key, *tags)
                pipe.execute()
        except redis.RedisError as exc:  # they are redelivered after the visibility timeout
            logger.warning("acks not sent: %s", exc, extra={"messages": len(tags)})

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        """At shutdown: send the queued acks, then restore what is really unacked."""
        self.send_queued_acks()
        return super().restore_unacked_once(stderr)


RedisCommand = tuple[str, tuple[Any, ...]]
"""A Redis command as kombu's publish batches record it: method name and arguments."""

_capture = threading.local()
"""Per thread: the list collecting publishes inside ``captured_publishes``, or unset."""


class CapturedPublishes:
    """Takes the place of kombu's ``PublishBatch`` inside ``captured_publishes``: each
    message is prepared and routed by kombu as usual, and its Redis commands are kept."""

    def __init__(self, channel: Any, commands: list[RedisCommand]) -> None:
        self.channel = channel
        self.commands = commands

    def publish(self, message: Any, **kwargs: Any) -> Any:
        """Route one prepared message; its commands arrive through ``add``."""
        return self.channel.basic_publish(message, _publish_batch=self, **kwargs)

    def add(self, name: str, *args: Any) -> None:
        """What kombu's channel would have sent for a message."""
        self.commands.append((name, args))

    def flush(self) -> None:
        """Nothing is sent here: the caller runs the commands."""

    def discard(self) -> None:
        """The publishing block failed: forget its commands."""
        self.commands.clear()

    def close(self) -> None:
        """Nothing to release."""


@contextmanager
def captured_publishes() -> Iterator[list[RedisCommand]]:
    """Inside the block, messages this thread publishes with ``Producer.batch()`` on this
    transport are not sent: their Redis commands collect in the list it yields, for the
    caller to run in its own transaction on the broker's Redis."""
    commands: list[RedisCommand] = []
    _capture.commands = commands
    try:
        yield commands
    finally:
        _capture.commands = None


def _capturing() -> list[RedisCommand] | None:
    commands: list[RedisCommand] | None = getattr(_capture, "commands", None)
    return commands


_KOMBU_CHANNEL: Any = kombu_redis.Channel
"""kombu's channel, untyped (mypy sees only part of it)."""


class Channel(kombu_redis.Channel):
    """A Redis channel that reuses one client object instead of building one per command."""

    QoS = QoS

    _cached_client: redis.Redis | None = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return _KOMBU_CHANNEL._create_client(self, asynchronous=True)
        client = self._cached_client
        if client is None or client.connection_pool is not self.pool:  # a new pool after a reset
            client = _KOMBU_CHANNEL._create_client(self)
            self._cached_client = client
        return client

    @property
    def supports_batch_publish(self) -> bool:
        """kombu's answer, except while publishes are being captured (nothing is sent)."""
        if _capturing() is not None:
            return True
        return bool(_KOMBU_CHANNEL.supports_batch_publish.fget(self))

    def create_publish_batch(self, max_size: int) -> Any:
        """kombu's publish batch, or the capturing stand-in inside ``captured_publishes``."""
        commands = _capturing()
        if commands is not None:
            if self.global_keyprefix:  # kombu adds the prefix when it sends, not in the batch
                raise ValueError("publishes cannot be captured with a global_keyprefix")
            return CapturedPublishes(self, commands)
        return _KOMBU_CHANNEL.create_publish_batch(self, max_size)


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with ``Channel`` above."""

    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """``Channel`` over kombu's Sentinel pool: the master is looked up on every connect."""


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with ``SentinelChannel`` above."""

    Channel = SentinelChannel


def transport_for(broker_url: str) -> str | None:
    """The ``broker_transport`` setting for a broker URL: this module's transport for plain
    Redis or Sentinel, else None (kombu picks by scheme)."""
    scheme = urlparse(broker_url).scheme
    if scheme in ("redis", "rediss"):
        return f"{__name__}:Transport"
    if scheme == "sentinel":
        return f"{__name__}:SentinelTransport"
    return None
