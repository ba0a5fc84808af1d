"""The reaper: no accepted job stays ``queued`` or ``running`` for ever.

Celery's late acks cover a prediction worker that dies: its unacknowledged messages come back
after the visibility timeout. Two cases are left that only a watcher outside the dead worker
can close:

* a fine-tune or export acked at its start whose worker died: its heartbeat stops, and the
  job fails with ``worker_lost`` (``JobStore.reap``), since retrying a job that may have killed
  its worker is the client's call;
* a predict job still open ``IMGQ_PREDICT_DEADLINE_S`` after it was accepted, whatever the
  cause (a message lost with a Redis that had not yet written it, a frozen worker): its images
  without a result are sent again ``IMGQ_PREDICT_REQUEUES`` times, a deadline apart, and then
  the job fails with ``deadline_exceeded``. A re-sent image that also arrives the first way is
  harmless: a stored prediction is never overwritten.

Claims are atomic in Redis, so every webhooks worker can run this loop side by side.
"""

from __future__ import annotations

import logging

from celery import Celery

from imgq.jobs import JobStatus, JobStore
from imgq.queueing import EXPLAIN_TASK, PREDICT_IMAGE_TASK, PREDICT_QUEUE
from imgq.settings import Settings

logger = logging.getLogger(__name__)


def reap(app: Celery, job_store: JobStore, settings: Settings) -> None:
    """One sweep: fail long jobs whose worker died, requeue or fail overdue predict jobs."""
    for job_id in job_store.reap(settings.train_heartbeat_timeout_s):
        logger.warning("reaped a job whose worker died", extra={"job_id": job_id})
    for job_id in job_store.claim_overdue():
        _handle_overdue(app, job_store, settings, job_id)


def _handle_overdue(app: Celery, job_store: JobStore, settings: Settings, job_id: str) -> None:
    fields = job_store.fields(job_id)
    if not fields or JobStatus(fields["status"]).is_terminal:
        return
    deadline_s = float(fields.get("deadline_s", settings.predict_deadline_s))
    if int(fields.get("requeues", "0")) >= settings.predict_requeues:
        error = {
            "code": "deadline_exceeded",
            "message": (
                f"The job did not finish within {deadline_s:g} s, even after being requeued; "
                "submit it again."
            ),
        }
        if job_store.fail(job_id, error):
            logger.error("failed an overdue job", extra={"job_id": job_id})
        return
    # Watch again first: if this process dies before sending, the next sweep comes back.
    requeues = job_store.extend_deadline(job_id, deadline_s)
    if fields.get("explain"):
        app.send_task(EXPLAIN_TASK, args=[job_id], queue=PREDICT_QUEUE)
        missing = [-1]
    else:
        missing = job_store.missing_images(job_id)
        with app.producer_or_acquire() as producer:
            for index in missing:
                app.send_task(
                    PREDICT_IMAGE_TASK, args=[job_id, index], queue=PREDICT_QUEUE, producer=producer
                )
    logger.warning(
        "requeued an overdue job",
        extra={"job_id": job_id, "requeues": requeues, "images": len(missing)},
    )
