"""Long polling: ``GET /jobs/<id>?wait=N`` returns as soon as the job ends, or after N seconds.

Clients that would otherwise poll every few milliseconds (and burn the API's CPU doing it) park
on a ``threading.Event`` instead. One pub/sub subscription per API process listens on the
channel the job store announces terminal jobs on and wakes the waiters of that job. The
listener thread starts on first use, so it is created in each gunicorn worker after the fork.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from imgq.redis_keys import JOBS_DONE_CHANNEL

logger = logging.getLogger(__name__)

RECONNECT_DELAY_S = 1.0
"""Pause before resubscribing after the listener lost Redis."""


class JobWaiters:
    """Wakes threads waiting for particular jobs to end."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._events: dict[str, list[threading.Event]] = defaultdict(list)
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._subscribed = threading.Event()

    def _ensure_listener(self) -> None:
        with self._lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(
                    target=self._listen, name="job-waiters", daemon=True
                )
                self._listener.start()
        self._subscribed.wait(timeout=2.0)

    def _listen(self) -> None:
        while True:
            try:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(JOBS_DONE_CHANNEL)
                self._subscribed.set()
                for message in pubsub.listen():
                    self._wake(message["data"].decode())
            except redis.RedisError as exc:
                self._subscribed.clear()
                logger.warning("job-waiters lost redis: %s", exc)
                self._wake_all()  # waiters re-read the record and decide for themselves
                threading.Event().wait(RECONNECT_DELAY_S)

    def _wake(self, job_id: str) -> None:
        with self._lock:
            events = self._events.pop(job_id, [])
        for event in events:
            event.set()

    def _wake_all(self) -> None:
        with self._lock:
            pending, self._events = self._events, defaultdict(list)
        for events in pending.values():
            for event in events:
                event.set()

    def register(self, job_id: str) -> threading.Event:
        """Start listening for ``job_id``; check the record *after* this to avoid a lost wake."""
        self._ensure_listener()
        event = threading.Event()
        with self._lock:
            self._events[job_id].append(event)
        return event

    @contextmanager
    def watching(self, job_id: str, wait_s: float) -> Iterator[threading.Event | None]:
        """Listen for ``job_id`` while the block runs (None when ``wait_s`` is 0).

        Enter it before reading or queueing the job, so an end that happens in between still
        sets the event.
        """
        event = self.register(job_id) if wait_s > 0 else None
        try:
            yield event
        finally:
            if event is not None:
                self.unregister(job_id, event)

    def unregister(self, job_id: str, event: threading.Event) -> None:
        """Stop listening (after a timeout, or when the job had already ended)."""
        with self._lock:
            events = self._events.get(job_id)
            if events and event in events:
                events.remove(event)
                if not events:
                    del self._events[job_id]
