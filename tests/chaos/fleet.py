"""Two of each on one Redis: two APIs, two prediction workers, two webhooks workers.

What a horizontally scaled deployment runs, on this machine: two gunicorns on their own ports,
two prediction workers sharing the predict queue, and two webhooks workers, each with its own
delivery scheduler and reaper (the ``Housekeeping`` bootstep). Every worker serves its own
Prometheus endpoint, so a test can tell which process did what: the prediction worker that
completed a job counts it in ``imgq_worker_jobs_finished_total``, the webhooks worker that
delivered a webhook in ``imgq_webhook_attempts_total``, the reaper that failed a job in the
former again. Below the fleet: streams through both APIs and the receiver's deliveries per
job, read only once nothing is left that could send a webhook again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import redis

from imgq import redis_keys
from imgq.local.commands import api_argv, worker_argv
from imgq.local.supervisor import (
    Service,
    api_answers,
    child_env,
    free_port,
    process_tree,
    start_redis,
    stop_all,
    wait_until,
    worker_answers,
)
from imgq.queueing import WorkerKind, make_celery
from imgq.settings import Settings
from tests.chaos.stack import Stream, Submission
from tests.support.metrics import scrape_url
from tests.support.webhooks import Receiver

PAIR = ("a", "b")
"""The suffixes of each pair's names: ``api-a``, ``predict-b``..."""

JOBS_COMPLETED = 'imgq_worker_jobs_finished_total{code="",status="succeeded",type="predict"}'
"""Predict jobs a prediction worker completed (its result stored a job's last image)."""
DELIVERED = 'imgq_webhook_attempts_total{outcome="delivered"}'
"""Webhook attempts a webhooks worker made that the receiver answered with a 2xx."""


def reaped(job_type: str, code: str) -> str:
    """The sample counting jobs of ``job_type`` a worker failed with ``code``."""
    return f'imgq_worker_jobs_finished_total{{code="{code}",status="failed",type="{job_type}"}}'


def launch_api(settings: Settings, log_dir: Path, name: str) -> Service:
    """A gunicorn of its own on a free port, not waited for."""
    bind = f"127.0.0.1:{free_port()}"
    return Service(
        name, api_argv(settings, bind=bind), child_env(settings), log_dir, url=f"http://{bind}"
    )


def launch_worker(settings: Settings, log_dir: Path, kind: WorkerKind, name: str) -> Service:
    """A worker on its own metrics port (``.url``) and ready file, not waited for."""
    own = settings.model_copy(
        update={"metrics_port": free_port(), "ready_file": log_dir / f"{name}-ready"}
    )
    return Service(
        name,
        worker_argv(own, kind, name),
        child_env(own),
        log_dir,
        url=f"http://127.0.0.1:{own.metrics_port}",
        node=f"{name}@{socket.gethostname()}",
    )


def sigkill_tree(service: Service) -> None:
    """SIGKILL a service and all its processes at once: a gunicorn master killed alone leaves
    its worker serving until it notices, so that would not be a dead API."""
    for pid in process_tree(service.process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    service.process.wait()
    service.stop()  # only closes its log now


def sample(service: Service, name: str) -> float:
    """One sample of a worker's metrics (0 when the series has not been written yet)."""
    return scrape_url(f"{service.url}/metrics").get(name, 0.0)


@dataclass
class Fleet:
    """The running pairs; ``server`` and ``client`` are the one Redis they share."""

    settings: Settings
    server: Service
    apis: list[Service]
    predicts: list[Service]
    hooks: list[Service]
    client: redis.Redis

    @classmethod
    def start(cls, settings: Settings, directory: Path) -> Fleet:
        """Start everything side by side (both prediction workers load their model at once);
        returns once every API answers ``/healthz`` and every worker a ping."""
        server = start_redis(settings, settings.redis_dir, directory)
        apis = [launch_api(settings, directory, f"api-{suffix}") for suffix in PAIR]
        predicts, hooks = (
            [launch_worker(settings, directory, kind, f"{role}-{suffix}") for suffix in PAIR]
            for kind, role in ((WorkerKind.PREDICT, "predict"), (WorkerKind.WEBHOOKS, "hooks"))
        )
        fleet = cls(
            settings, server, apis, predicts, hooks, redis.Redis.from_url(settings.redis_url)
        )
        try:
            control = make_celery(settings).control
            for worker in [*hooks, *predicts]:
                wait_until(partial(worker_answers, control, worker), 240, worker.name)
            for api in apis:
                wait_until(partial(api_answers, api), 60, api.name)
        except BaseException:
            fleet.close()
            raise
        return fleet

    @property
    def services(self) -> list[Service]:
        """Every process but Redis."""
        return [*self.predicts, *self.hooks, *self.apis]

    def close(self) -> None:
        """Workers and APIs first, Redis last."""
        stop_all(self.services)
        stop_all([self.server])


def deliveries(record: Receiver) -> Counter[str]:
    """Requests received per ``Imgq-Event-Id`` (``<job id>.<status>``)."""
    with record.lock:
        return Counter(headers["Imgq-Event-Id"] for headers, _ in record.requests)


def delivered_by_job(client: redis.Redis, record: Receiver, job_ids: list[str]) -> Counter[str]:
    """Wait until each job's webhook arrived and no delivery is scheduled or leased (nothing
    left that could send one again); returns the deliveries per job."""

    def settled() -> bool:
        received = {event.partition(".")[0] for event in deliveries(record)}
        return set(job_ids) <= received and not (
            client.zcard(redis_keys.WEBHOOKS_SCHEDULED)
            or client.zcard(redis_keys.WEBHOOKS_INFLIGHT)
        )

    wait_until(settled, 60, f"webhooks of {len(job_ids)} jobs")
    counts: Counter[str] = Counter()
    for event, count in deliveries(record).items():
        counts[event.partition(".")[0]] += count
    return Counter({job_id: counts[job_id] for job_id in job_ids})


def run_streams(streams: list[Stream], jobs_each: int) -> list[Submission]:
    """Run the streams until each had ``jobs_each`` jobs accepted; returns every submission."""
    with ExitStack() as running:
        for stream in streams:
            running.enter_context(stream)
        for stream in streams:
            stream.wait_accepted(jobs_each)
    return [submission for stream in streams for submission in stream.submissions]


def accepted_ids(submissions: list[Submission]) -> list[str]:
    """Ids of the accepted jobs."""
    return [s.job_id for s in submissions if s.job_id is not None]
