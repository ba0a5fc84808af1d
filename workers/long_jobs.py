"""What fine-tunes and exports share: claiming the job, a heartbeat while it runs, and ending
it failed when the work raises.

Both run on training workers, are acknowledged when they start, and can run for a long time.
A long job is watched by the reaper (``workers.reaper``), which fails it as ``worker_lost`` once
its beats stop: only a dead (or frozen) worker process stops them, not a long phase without
callbacks. Training also beats on every progress report (``workers.train.RedisHooks``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from celery.exceptions import SoftTimeLimitExceeded

from imgq.errors import ImgqError, TimeLimit
from imgq.jobs.status import JobType
from workers.context import WorkerContext
from workers.outcomes import fail_job

logger = logging.getLogger(__name__)

Result = TypeVar("Result")


@dataclass(frozen=True)
class LongJob:
    """A fine-tune or export this worker has started."""

    context: WorkerContext
    job_type: JobType
    job_id: str
    params: dict[str, Any]
    client: str
    """The client whose key submitted the job."""


def claim_long_job(context: WorkerContext, job_type: JobType, job_id: str) -> LongJob | None:
    """Start a queued job; None when it is gone or someone else started (or canceled) it."""
    fields = context.jobs.fields(job_id)
    if not fields or not context.jobs.mark_running([job_id])[0]:
        logger.info("job gone or not queued; skipping", extra={"job_id": job_id})
        return None
    params = json.loads(fields["params"])
    return LongJob(context, job_type, job_id, params, fields.get("client", ""))


def run_watched(
    job: LongJob, work: Callable[[], Result], unexpected: ImgqError
) -> tuple[bool, Result | None]:
    """Run ``work`` with a heartbeat; returns ``(True, its result)``, or ``(False, None)`` once
    the job has been failed: with the ``ImgqError`` it raised, ``time_limit`` past the soft
    time limit, or ``unexpected`` (logged with its traceback) for anything else."""
    jobs = job.context.jobs
    try:
        with heartbeat(job.context, job.job_id):
            return True, work()
    except SoftTimeLimitExceeded:
        limit_s = job.context.settings.train_time_limit_s
        fail_job(jobs, job.job_type, job.job_id, TimeLimit.after(limit_s))
    except ImgqError as exc:
        fail_job(jobs, job.job_type, job.job_id, exc)
    except Exception:
        logger.exception("%s crashed", job.job_type.value, extra={"job_id": job.job_id})
        fail_job(jobs, job.job_type, job.job_id, unexpected)
    return False, None


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
