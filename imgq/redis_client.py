"""The one way imgq makes a Redis client: plain ``redis://`` or through Redis Sentinel.

Every client of a process (job store, pub/sub waiters, model events, webhook schedule,
quotas all share the one their process builds) comes from ``redis_client``, so a deployment
switches to Sentinel by changing ``IMGQ_REDIS_URL`` alone. The Sentinel form is one URL::

    sentinel://[:password@]host:port[,host:port...]/db?master_name=NAME

For ``redis://``, ``rediss://`` and ``unix://`` URLs the client is
``redis.Redis.from_url(url, **options)``, exactly as before. For ``sentinel://`` it is
``redis.sentinel.Sentinel(...).master_for(NAME)``: its connections ask the sentinels where the
master is each time they connect, and drop themselves when the server they reach has become a
replica, so after a failover the next command reaches the new master. Celery's broker takes the
same URL; ``kombu_broker`` turns it into what kombu's Sentinel transport reads.

Replication is asynchronous, so a write acknowledged by a master that dies before its replica
got it is lost in the failover. ``wait_for_replicas`` closes that window where it matters (the
API's ``202``): with ``IMGQ_REDIS_MIN_REPLICAS`` set, the answer waits for ``WAIT``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel"
"""URL scheme of the Sentinel form (kombu's name for its Sentinel transport, too)."""
SENTINEL_PORT = 26379
"""Port of a sentinel named without one."""
REPLICATION_PROBE_KEY = "imgq:replication-probe"
"""Written just before ``WAIT`` so the waiting connection's offset covers earlier writes."""


_SENTINEL_TIMEOUTS = ("socket_timeout", "socket_connect_timeout")


class ReplicationTimeout(redis.RedisError):
    """Fewer replicas than required confirmed a write in time (answered as ``503``)."""


@dataclass(frozen=True)
class SentinelTarget:
    """A master as the Sentinel form of a URL names it."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int
    password: str | None


def parse_sentinel_url(url: str) -> SentinelTarget | None:
    """The sentinels, master name, database and password of a ``sentinel://`` URL.

    Args:
        url: a Redis URL in any form imgq accepts.

    Returns:
        None for any other scheme (a plain Redis URL).

    Raises:
        ValueError: a ``sentinel://`` URL without hosts or ``master_name``.
    """
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        return None
    userinfo, _, hosts = parts.netloc.rpartition("@")
    password = unquote(userinfo.partition(":")[2]) if userinfo else None
    sentinels = tuple(_host_port(entry) for entry in hosts.split(",") if entry)
    master_name = parse_qs(parts.query).get("master_name", [""])[0]
    if not sentinels or not master_name:
        raise ValueError(
            f"Received a Redis URL `{url}`; the Sentinel form is "
            "`sentinel://host:port[,host:port...]/db?master_name=NAME`."
        )
    db = int(parts.path.strip("/") or 0)
    return SentinelTarget(sentinels, master_name, db, password or None)


def _host_port(entry: str) -> tuple[str, int]:
    host, _, port = entry.rpartition(":")
    if not host:
        return entry, SENTINEL_PORT
    return host.strip("[]"), int(port)


def redis_client(url: str, **options: Any) -> redis.Redis:
    """A client for ``url``, following the master through failovers when it names sentinels.

    Args:
        url: ``redis://``, ``rediss://``, ``unix://`` or the Sentinel form (module docstring).
        **options: connection options (timeouts, health checks) for the data connections; the
            timeouts also bound each question to a sentinel.

    Returns:
        A thread-safe ``redis.Redis`` with its own connection pool.
    """
    target = parse_sentinel_url(url)
    if target is None:
        return redis.Redis.from_url(url, **options)
    timeouts = {name: options[name] for name in _SENTINEL_TIMEOUTS if name in options}
    # redis-py leaves redis.sentinel untyped.
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels), sentinel_kwargs=timeouts or None, **timeouts
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        target.master_name, db=target.db, password=target.password, **options
    )
    return client


def kombu_broker(url: str) -> tuple[str, dict[str, Any]]:
    """The broker URL and extra transport options kombu needs for an imgq Redis URL.

    kombu's Sentinel transport names each sentinel as its own ``sentinel://`` URL joined by
    ``;`` and reads the master's name from the transport options; plain URLs pass unchanged.

    Returns:
        ``(broker_url, transport_options)``; the options are empty for plain Redis.
    """
    target = parse_sentinel_url(url)
    if target is None:
        return url, {}
    auth = f":{target.password}@" if target.password else ""
    hosts = ";".join(f"{SENTINEL_SCHEME}://{auth}{host}:{port}" for host, port in target.sentinels)
    return f"{hosts}/{target.db}", {"master_name": target.master_name}


def wait_for_replicas(client: redis.Redis, replicas: int, timeout_ms: int) -> None:
    """Return once ``replicas`` replicas hold every write this process made to ``client``'s
    master so far; raise ``ReplicationTimeout`` if they do not within ``timeout_ms``.

    ``WAIT`` waits for the replication offset of the last write *on its own connection*. The
    writes to cover went out on several (the job store's pool, the Celery producer's), so one
    connection writes a probe key and waits in the same round trip: the master's replication
    stream is ordered, so the probe's offset is past every write it had already acknowledged,
    whichever connection made it. One round trip per request, whatever wrote.

    Args:
        client: a client of the master the writes went to.
        replicas: how many replicas must confirm; 0 returns at once.
        timeout_ms: the longest wait, in milliseconds.

    Raises:
        ReplicationTimeout: fewer replicas confirmed (the writes may still be lost).
        redis.RedisError: the master is unreachable.
    """
    if replicas <= 0:
        return
    pipe = client.pipeline(transaction=False)
    pipe.incr(REPLICATION_PROBE_KEY)
    pipe.wait(replicas, timeout_ms)
    _, confirmed = pipe.execute()
    if int(confirmed) < replicas:
        raise ReplicationTimeout(
            f"{confirmed} of {replicas} replicas confirmed the write within {timeout_ms} ms"
        )
