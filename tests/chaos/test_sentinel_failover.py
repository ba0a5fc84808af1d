"""Losing the Redis master under a stream of jobs: Sentinel fails over, the stack follows.

A master, a replica and three sentinels (``tests.chaos.sentinels``); the API, a prediction
worker and the webhooks worker (the reaper) reach Redis only through the Sentinel URL. Clients
keep submitting while the master is SIGKILLed; a ``503`` is a refusal the client retries, only
``202`` counts as accepted. Replication is asynchronous, so without ``IMGQ_REDIS_MIN_REPLICAS``
a job acknowledged in the last moments before the kill may never have reached the replica; the
test measures how many. With ``IMGQ_REDIS_MIN_REPLICAS=1`` every ``202`` waited for ``WAIT``,
and none may be lost. Each test prints its figures (``-s``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from imgq.jobs.status import JobStatus
from imgq.local.supervisor import (
    Service,
    free_port,
    start_api,
    start_predict_worker,
    start_webhooks_worker,
    wait_until,
)
from imgq.redis_client import redis_client
from imgq.redis_keys import job_record
from imgq.settings import Settings
from tests.chaos.sentinels import SentinelGroup
from tests.chaos.stack import Stream, Submission, chaos_settings

pytestmark = pytest.mark.e2e

CAT, ESPRESSO = 285, 967
"""ImageNet classes of scikit-image's chelsea and coffee."""
SETTLE_S = 40
"""How long accepted jobs get to end after the stream stops (redelivery, the reaper)."""


@dataclass
class Failover:
    """The sentinel group and the workers that outlive each test's API."""

    group: SentinelGroup
    settings: Settings
    directory: Path
    workers: list[Service]


@pytest.fixture(scope="module")
def failover(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Failover]:
    """Sentinel-managed Redis, a prediction worker and the reaper, all on the Sentinel URL."""
    directory = tmp_path_factory.mktemp("sentinel")
    group = SentinelGroup(directory)
    own = chaos_settings(
        settings,
        directory,
        redis_url=group.url,
        redis_dir=settings.redis_dir,  # the group runs its own servers
        ready_file=directory / "predict-ready",
        metrics_port=0,
    )
    api = start_api(own, directory, free_port())  # prepares the model store the worker reads
    api.stop()
    workers = [
        start_webhooks_worker(own, directory, name=f"hooks-{free_port()}"),
        start_predict_worker(own, directory, name=f"predict-{free_port()}"),
    ]
    yield Failover(group, own, directory, workers)
    for worker in workers:
        worker.stop()
    group.close()


@dataclass
class Tally:
    """What became of a stream's accepted jobs."""

    succeeded: int
    lost: list[str]
    """Accepted jobs whose record is gone or that never ended."""


def tally(client: redis.Redis, accepted: list[Submission]) -> Tally:
    """Wait up to ``SETTLE_S`` for every accepted job to end; count the ones that did not."""
    job_ids = [str(s.job_id) for s in accepted]

    def statuses() -> list[bytes | None]:
        pipe = client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(job_record(job_id), "status")
        return list(pipe.execute())

    def settled() -> bool:
        return all(s is not None and JobStatus(s.decode()).is_terminal for s in statuses())

    with contextlib.suppress(TimeoutError):  # the ones still open are counted as lost below
        wait_until(settled, SETTLE_S, f"{len(job_ids)} jobs to end")
    final = statuses()
    lost = [
        job_id
        for job_id, status in zip(job_ids, final, strict=True)
        if status is None or not JobStatus(status.decode()).is_terminal
    ]
    succeeded = sum(s == JobStatus.SUCCEEDED.encode() for s in final)
    return Tally(succeeded, lost)


def run_failover(failover: Failover, images: list[tuple[bytes, int]], min_replicas: int) -> str:
    """Stream jobs at an API with ``min_replicas``, kill the master mid-stream; the figures."""
    settings = failover.settings.model_copy(update={"redis_min_replicas": min_replicas})
    api = start_api(settings, failover.directory, free_port())
    group = failover.group
    try:
        with Stream(api.url, images, rate_per_s=40) as stream:
            stream.wait_accepted(60)
            killed_at = time.time()
            old = group.kill_master()
            wait_until(lambda: group.master_port() != old, 30, "a new master")
            promoted_in = time.time() - killed_at
            group.restart(old)  # as a kubelet would; it returns as the new master's replica
            stream.wait_accepted(len(stream.accepted) + 60, timeout_s=60)
        first_after = min(s.sent_at for s in stream.accepted if s.sent_at > killed_at)
        submissions = stream.submissions
        outcome = tally(redis_client(settings.redis_url), stream.accepted)
    finally:
        api.stop()
    refused = [s for s in submissions if s.status != 202]
    assert {s.status for s in refused} <= {503}, refused[:3]
    summary = (
        f"min_replicas={min_replicas}: master killed, new master in {promoted_in:.1f} s, "
        f"first 202 sent {first_after - killed_at:.1f} s after the kill; submitted "
        f"{len(submissions)}, 503 {len(refused)}, accepted {len(stream.accepted)}, "
        f"succeeded {outcome.succeeded}, lost {len(outcome.lost)}"
    )
    print(f"\n{summary}")
    assert outcome.succeeded + len(outcome.lost) == len(stream.accepted), summary
    if min_replicas:
        assert not outcome.lost, summary
    return summary


@pytest.fixture
def images(cat_jpeg: bytes, coffee_jpeg: bytes) -> list[tuple[bytes, int]]:
    """The stream's images with the class each must get."""
    return [(cat_jpeg, CAT), (coffee_jpeg, ESPRESSO)]


def test_master_killed_without_wait_loses_at_most_the_unreplicated_tail(
    failover: Failover, images: list[tuple[bytes, int]]
) -> None:
    run_failover(failover, images, min_replicas=0)


def test_master_killed_with_min_replicas_loses_no_accepted_job(
    failover: Failover, images: list[tuple[bytes, int]]
) -> None:
    run_failover(failover, images, min_replicas=1)
