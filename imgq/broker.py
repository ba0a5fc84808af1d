"""kombu's Redis transport, made cheaper per message without changing what it stores.

Profiling a prediction worker under load (``bench/serving_path.py`` with ``py-spy``) found
half its Python time in kombu's ack emulation, for two reasons this module removes:

- every publish, delivery bookkeeping and ack built a new ``redis.Redis`` client object
  (``Channel._create_client``), whose constructor copies a table of some two hundred response
  callbacks; ``Channel`` here keeps one client per connection pool (a ``redis.Redis`` is
  thread-safe: each command borrows a pooled connection);
- each ack was its own round trip (``ZREM`` + ``HDEL`` of the unacked index and hash); inside
  ``acks_in_one_round_trip`` the acks of a whole batch are collected and sent as one
  pipeline when the block ends.

Everything else is kombu's: the same keys, the same unacked hash and visibility timeout, the
same restore of unacked messages after a crash. A process that dies inside the block has
acked nothing, so its messages come back after the visibility timeout, as they would have
before (delivery stays at-least-once; job records make it effectively-once).

``transport_for`` picks this transport for ``redis://`` and ``rediss://`` broker URLs and
leaves every other scheme to kombu.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

_pending = threading.local()
"""Per thread: the QoS objects and delivery tags whose acks are being collected, or unset."""


class QoS(kombu_redis.QoS):
    """Ack emulation whose acks can be collected and sent together."""

    def ack(self, delivery_tag: str) -> None:
        """Remove a delivered message from the unacked index and hash (now, or with the
        batch being collected on this thread)."""
        collected: dict[QoS, list[str]] | None = getattr(_pending, "acks", None)
        if collected is None:
            super().ack(delivery_tag)
            return
        collected.setdefault(self, []).append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)  # kombu's in-memory bookkeeping

    def remove_acked(self, delivery_tags: list[str]) -> None:
        """One round trip for many acks: what ``ack`` sends for each, pipelined."""
        with self.pipe_or_acquire() as pipe:
            pipe.zrem(self.unacked_index_key, *delivery_tags)
            pipe.hdel(self.unacked_key, *delivery_tags)
            pipe.execute()


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


@contextmanager
def acks_in_one_round_trip() -> Iterator[None]:
    """Collect the acks made on this thread inside the block; send them in one pipeline per
    channel at its end. Messages whose ack was collected stay unacked in Redis until then."""
    if getattr(_pending, "acks", None) is not None:  # nested: the outer block sends
        yield
        return
    collected: dict[QoS, list[str]] = {}
    _pending.acks = collected
    try:
        yield
    finally:
        _pending.acks = None
        for qos, tags in collected.items():
            qos.remove_acked(tags)


def transport_for(broker_url: str) -> str | None:
    """The ``broker_transport`` setting for a broker URL: this module's transport for plain
    Redis, else None (kombu picks by scheme, e.g. for Sentinel)."""
    if urlparse(broker_url).scheme in ("redis", "rediss"):
        return f"{__name__}:Transport"
    return None
