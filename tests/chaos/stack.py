"""A private imgq stack for fault tests, and a steady stream of predict jobs to run against it.

Fault tests kill workers and restart Redis, so they get a Redis, API and workers of their own
instead of the session's. Every accepted job (a ``202``) is remembered so the test can check
afterwards that each one ended ``succeeded`` with the right result, and measure how long the
fault held it up.
"""

from __future__ import annotations

import base64
import os
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from imgq.jobs.status import JobStatus
from imgq.local.supervisor import (
    Service,
    free_port,
    start_api,
    start_predict_worker,
    start_redis,
    start_webhooks_worker,
    wait_until,
)
from imgq.redis_keys import KOMBU_UNACKED, REDUNDANT_RESULTS, job_record
from imgq.settings import Settings
from tests.support.http import http

CHAOS_VISIBILITY_TIMEOUT_S = 6
"""Redelivery after a worker dies; production's 60 s scaled down, with a 1 s restore sweep."""


def chaos_settings(settings: Settings, directory: Path, **overrides: Any) -> Settings:
    """A private copy of ``settings`` for a fault test: its own Redis, store and uploads under
    ``directory``, and the scaled-down redelivery and check intervals; ``overrides`` last."""
    return settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{free_port()}/0",
            "redis_dir": directory / "redis",
            "model_store": str(directory / "models"),
            "upload_dir": directory / "uploads",
            "visibility_timeout_s": CHAOS_VISIBILITY_TIMEOUT_S,
            "unacked_restore_interval_s": 1,
            "predict_check_interval_s": 3,
            **overrides,
        }
    )


class Stack:
    """Redis, gunicorn, one prediction worker and one webhooks worker (the reaper), all private."""

    def __init__(self, settings: Settings, directory: Path) -> None:
        self.settings = settings
        self.directory = directory
        self.redis = start_redis(settings, settings.redis_dir, directory)
        self.api = start_api(settings, directory, free_port())
        self.webhooks = start_webhooks_worker(settings, directory, name=f"hooks-{free_port()}")
        self.predict = self.start_predict()
        self.client = redis.Redis.from_url(settings.redis_url)

    def start_predict(self) -> Service:
        """A fresh prediction worker; returns once its model is warm and it consumes."""
        return start_predict_worker(self.settings, self.directory, name=f"predict-{free_port()}")

    def stop_redis(self) -> None:
        """Stop Redis the way an operator does (SIGTERM: it writes its AOF and exits)."""
        self.redis.stop()

    def start_redis(self) -> None:
        """Start Redis again on the same port and data directory."""
        self.redis = start_redis(self.settings, self.settings.redis_dir, self.directory)

    def held(self) -> int:
        """Messages some worker has taken and not yet acknowledged."""
        return int(self.client.hlen(KOMBU_UNACKED))

    def close(self) -> None:
        """Stop everything, workers first."""
        for service in (self.predict, self.webhooks, self.api, self.redis):
            service.stop()


def sigkill(service: Service) -> None:
    """Kill a service with no chance to clean up, and reap it."""
    os.kill(service.process.pid, signal.SIGKILL)
    service.process.wait()
    service.stop()  # only closes its log now


@dataclass
class Submission:
    """One request of the stream and what the API answered."""

    sent_at: float
    status: int
    job_id: str | None
    body: dict[str, Any]
    headers: dict[str, str]
    expected: int = 0
    """Index of the class the job's image shows (checked against its top label)."""


@dataclass
class Stream:
    """Clients submitting one-image predict jobs at a steady rate from a few threads.

    ``images`` pairs each JPEG with the class index it must be predicted as; jobs cycle over
    them, so a result that belongs to another job would be caught. ``fields`` go into every
    request's body besides the image (a ``callback_url``).
    """

    base: str
    images: list[tuple[bytes, int]]
    rate_per_s: float = 25.0
    threads: int = 4
    fields: dict[str, Any] = field(default_factory=dict)
    submissions: list[Submission] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Stream:
        bodies = [
            ({"images": [base64.b64encode(jpeg).decode()], "top_k": 1, **self.fields}, index)
            for jpeg, index in self.images
        ]
        interval = self.threads / self.rate_per_s
        for number in range(self.threads):
            thread = threading.Thread(target=self._submit, args=(bodies, number, interval))
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join()

    def _submit(
        self, bodies: list[tuple[dict[str, Any], int]], number: int, interval: float
    ) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {http.key}"
        count = number
        next_at = time.monotonic() + number * interval / self.threads
        while not self._stop.is_set():
            body, expected = bodies[count % len(bodies)]
            count += self.threads
            sent_at = time.time()
            try:
                response = session.post(f"{self.base}/jobs/predict", json=body, timeout=30)
                reply = response.json()
                submission = Submission(
                    sent_at,
                    response.status_code,
                    reply.get("id") if response.status_code == 202 else None,
                    reply,
                    dict(response.headers),
                    expected,
                )
            except (requests.RequestException, ValueError) as exc:
                submission = Submission(sent_at, 0, None, {"exception": repr(exc)}, {}, expected)
            with self._lock:
                self.submissions.append(submission)
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    @property
    def accepted(self) -> list[Submission]:
        """Submissions answered ``202``."""
        with self._lock:
            return [s for s in self.submissions if s.status == 202]

    def wait_accepted(self, count: int, timeout_s: float = 120) -> None:
        """Block until ``count`` jobs were accepted in all."""
        wait_until(lambda: len(self.accepted) >= count, timeout_s, f"{count} accepted jobs")


@dataclass
class Outcome:
    """What became of the accepted jobs of a stream."""

    documents: dict[str, dict[str, Any]]
    latencies_s: dict[str, float]
    resent: int
    """Images the reaper found with no message anywhere and sent again."""
    redundant: int
    """Image results computed again (redelivered messages) and discarded, in all Redis."""

    def summary(self, submissions: list[Submission]) -> str:
        """One line of figures for the closing note: counts, duplicates, delays."""
        statuses: dict[int, int] = {}
        for submission in submissions:
            statuses[submission.status] = statuses.get(submission.status, 0) + 1
        done = [d for d in self.documents.values() if d["status"] == JobStatus.SUCCEEDED]
        latencies = sorted(self.latencies_s.values())
        return (
            f"submitted {len(submissions)} (answers {dict(sorted(statuses.items()))}), "
            f"accepted {len(self.documents)}, succeeded {len(done)}, "
            f"images resent by the reaper {self.resent}, "
            f"results computed twice and discarded {self.redundant}, duplicates stored 0, "
            f"p50 latency {statistics.median(latencies):.2f} s, max {latencies[-1]:.2f} s"
        )


def settle(
    base: str, client: redis.Redis, submissions: list[Submission], timeout_s: float = 180
) -> Outcome:
    """Wait until every accepted job has ended; return their documents and latencies."""
    job_ids = [s.job_id for s in submissions if s.job_id is not None]

    def statuses() -> list[bytes | None]:
        pipe = client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(job_record(job_id), "status")
        return list(pipe.execute())

    def all_ended() -> bool:
        return all(s is not None and JobStatus(s.decode()).is_terminal for s in statuses())

    try:
        wait_until(all_ended, timeout_s, f"{len(job_ids)} jobs to end")
    except TimeoutError as exc:
        counts: dict[str, int] = {}
        for status in statuses():
            key = "missing" if status is None else status.decode()
            counts[key] = counts.get(key, 0) + 1
        raise AssertionError(
            f"jobs by status {counts}; predict queue {client.llen('predict')}, "
            f"unacked {client.hlen(KOMBU_UNACKED)}"
        ) from exc
    documents = {job_id: http.get(f"{base}/jobs/{job_id}").json() for job_id in job_ids}
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(job_record(job_id), ["created_at", "finished_at", "requeues"])
    records = pipe.execute()
    latencies = {
        job_id: float(finished) - float(created)
        for job_id, (created, finished, _) in zip(job_ids, records, strict=True)
    }
    resent = sum(int(count or 0) for *_, count in records)
    return Outcome(documents, latencies, resent, int(client.get(REDUNDANT_RESULTS) or 0))


def assert_each_job_has_its_own_result(outcome: Outcome, submissions: list[Submission]) -> None:
    """Every accepted job succeeded, with one prediction of its own image's class."""
    for submission in submissions:
        if submission.job_id is None:
            continue
        document = outcome.documents[submission.job_id]
        assert document["status"] == JobStatus.SUCCEEDED, document
        (prediction,) = document["result"]["predictions"]
        assert prediction[0]["index"] == submission.expected, document
