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

``transport_for`` picks this transport for ``redis://`` and ``rediss://`` broker URLs and
leaves every other scheme to kombu.
"""

from __future__ import annotations

import logging
import threading
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


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with ``Channel`` above."""

    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """The ``broker_transport`` setting for a broker URL: this module's transport for plain
    Redis, else None (kombu picks by scheme, e.g. for Sentinel)."""
    if urlparse(broker_url).scheme in ("redis", "rediss"):
        return f"{__name__}:Transport"
    return None
