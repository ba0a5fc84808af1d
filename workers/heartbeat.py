"""Heartbeats of long jobs (fine-tunes, exports), beaten from a side thread while they run.

A long job is watched by the reaper (``workers.reaper``), which fails it as ``worker_lost`` once
the beats stop: only a dead (or frozen) worker process stops them, not a long phase without
callbacks. Training also beats on every progress report (``workers.train.RedisHooks``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from workers.context import WorkerContext

logger = logging.getLogger(__name__)


@contextmanager
def heartbeat(context: WorkerContext, job_id: str) -> Iterator[None]:
    """Beat for ``job_id`` every fifth of the heartbeat timeout while the block runs."""
    context.heartbeats.watch(job_id)
    stop = threading.Event()
    interval = max(1.0, context.settings.train_heartbeat_timeout_s / 5)

    def beat() -> None:
        while not stop.wait(interval):
            try:
                context.heartbeats.beat(job_id)
            except redis.RedisError as exc:
                logger.warning("heartbeat failed: %s", exc, extra={"job_id": job_id})

    threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True).start()
    try:
        yield
    finally:
        stop.set()
