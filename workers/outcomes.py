"""How a worker ends a job: the transition in Redis, then the metric that counts it.

Every way a worker ends a job goes through here, so ``imgq_worker_jobs_finished_total`` counts
exactly the transitions this process made (a job ended by someone else first is not counted).
"""

from __future__ import annotations

from typing import Any

from imgq.errors import ImgqError
from imgq.jobs.status import JobStatus, JobType
from imgq.jobs.store import JobStore
from workers.metrics import JOB_LATENCY, JOBS_FINISHED


def fail_job(jobs: JobStore, job_type: JobType, job_id: str, error: ImgqError) -> bool:
    """Fail ``job_id`` with ``error``; False (and nothing counted) if it had already ended."""
    if not jobs.fail(job_id, error):
        return False
    JOBS_FINISHED.labels(job_type.value, JobStatus.FAILED.value, error.code).inc()
    return True


def succeed_job(jobs: JobStore, job_type: JobType, job_id: str, result: dict[str, Any]) -> bool:
    """Store ``result`` on ``job_id``; False if it had already ended."""
    if not jobs.succeed(job_id, result):
        return False
    JOBS_FINISHED.labels(job_type.value, JobStatus.SUCCEEDED.value, "").inc()
    return True


def cancel_running_job(jobs: JobStore, job_type: JobType, job_id: str) -> bool:
    """End a job that stopped on request; False if it had already ended."""
    if not jobs.mark_canceled(job_id):
        return False
    JOBS_FINISHED.labels(job_type.value, JobStatus.CANCELED.value, "").inc()
    return True


def count_completed_predictions(latencies: list[float]) -> None:
    """Count predict jobs that the last image's result completed (inside Lua)."""
    for latency in latencies:
        JOBS_FINISHED.labels(JobType.PREDICT.value, JobStatus.SUCCEEDED.value, "").inc()
        JOB_LATENCY.labels(JobType.PREDICT.value).observe(latency)
