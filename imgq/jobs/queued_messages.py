"""Which predict messages exist right now: in the queue, or in some worker's hands.

Kombu's Redis transport moves a message from the queue list to its ``unacked`` hash in two
steps (``BRPOP``, then ``HSET``): a worker killed between them loses the message, and no
visibility timeout brings it back. The reaper uses this module to find the images of open jobs
that have no message anywhere, and sends those again. It reads kombu's own keys, so it is tied
to kombu's Redis layout: a list per queue, and ``unacked`` holding ``[message, exchange,
routing_key]`` JSON by delivery tag.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import redis

from imgq.queueing import EXPLAIN_TASK, PREDICT_IMAGE_TASK, message_images
from imgq.redis_keys import KOMBU_UNACKED


@dataclass
class PendingWork:
    """Predict work that some message will still bring to a worker."""

    images: set[tuple[str, int]] = field(default_factory=set)
    """``(job_id, index)`` of every image some predict message carries."""
    explained_jobs: set[str] = field(default_factory=set)
    """Job ids of every explain message."""

    def add(self, message: dict[str, Any]) -> None:
        """Record one kombu message if it is predict work."""
        task = message.get("headers", {}).get("task")
        if task not in (PREDICT_IMAGE_TASK, EXPLAIN_TASK):
            return
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        if task == PREDICT_IMAGE_TASK:
            self.images.update(message_images(args))
        else:
            self.explained_jobs.add(str(args[0]))


def pending_work(client: redis.Redis, queue: str, scan_limit: int) -> PendingWork | None:
    """Every predict message queued or held; None when the queue is longer than ``scan_limit``.

    A long queue means the jobs are merely waiting; scanning it would cost more than the rare
    lost message is worth, so the check is skipped until the queue drains.
    """
    if int(client.llen(queue)) > scan_limit:
        return None
    pipe = client.pipeline(transaction=True)  # one instant: a message moving is seen once
    pipe.lrange(queue, 0, -1)
    pipe.hvals(KOMBU_UNACKED)
    queued, held = pipe.execute()
    work = PendingWork()
    for raw in queued:
        work.add(json.loads(raw))
    for raw in held:
        work.add(json.loads(raw)[0])
    return work
