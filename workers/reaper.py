"""The reaper: no accepted job stays ``queued`` or ``running`` for ever.

Celery's late acks cover a prediction worker that dies holding messages: they come back after
the visibility timeout. Three cases are left that only a watcher outside the dead worker can
close:

* a fine-tune or export acked at its start whose worker died: its heartbeat stops
  (``HeartbeatRegistry``), and the job fails with ``worker_lost``, since retrying a job that
  may have killed its worker is the client's call;
* a predict image whose message is gone: kombu takes a message off the queue and records it
  as unacknowledged in two steps, and a worker killed between them loses it. Every
  ``IMGQ_PREDICT_CHECK_INTERVAL_S`` an open job's images without a result are looked for in
  the queue and in the workers' unacknowledged messages; those found nowhere are sent again.
  A duplicate is harmless (a stored prediction is never overwritten), a lost image is not;
* a predict job still open ``IMGQ_PREDICT_DEADLINE_S`` after it was accepted (a backlog no
  worker drains, a model that never loads): it fails with ``deadline_exceeded``.

Claims are atomic leases in Redis (``PredictChecks.claim_due``), so every webhooks worker can
run this loop side by side, and a reaper that dies mid-sweep loses no job: the jobs it claimed
are due again one ``IMGQ_PREDICT_CHECK_INTERVAL_S`` later, as if it had checked them.
"""

from __future__ import annotations

import logging
import time

from celery import Celery

from imgq.errors import DeadlineExceeded, WorkerLost
from imgq.jobs.queued_messages import PendingWork, pending_work
from imgq.jobs.status import JobStatus, JobType
from imgq.queueing import PREDICT_QUEUE, send_predict_messages
from workers.context import WorkerContext
from workers.outcomes import fail_job

logger = logging.getLogger(__name__)


def reap(app: Celery, context: WorkerContext) -> None:
    """One sweep: fail long jobs whose worker died; resend lost images; fail overdue jobs."""
    reap_silent_jobs(context)
    # A lease of one check interval: what the check would schedule next anyway.
    due = context.predict_checks.claim_due(lease_s=context.settings.predict_check_interval_s)
    if not due:
        return
    pending = pending_work(context.redis, PREDICT_QUEUE, context.settings.predict_check_scan_limit)
    for job_id in due:
        _check(app, context, job_id, pending)


def reap_silent_jobs(context: WorkerContext) -> list[str]:
    """Fail running fine-tunes and exports whose worker stopped beating; returns their ids."""
    silent_for_s = context.settings.train_heartbeat_timeout_s
    reaped = []
    for job_id in context.heartbeats.silent(silent_for_s):
        job_type = JobType(context.jobs.fields(job_id).get("type", JobType.FINETUNE))
        if fail_job(context.jobs, job_type, job_id, WorkerLost.after_silence(silent_for_s)):
            reaped.append(job_id)
            logger.warning("reaped a job whose worker died", extra={"job_id": job_id})
        context.heartbeats.forget(job_id)  # failed now, or gone or ended already
    return reaped


def _check(app: Celery, context: WorkerContext, job_id: str, pending: PendingWork | None) -> None:
    settings = context.settings
    fields = context.jobs.fields(job_id)
    if not fields or JobStatus(fields["status"]).is_terminal:
        context.predict_checks.forget(job_id)  # else its lease would bring it back for ever
        return
    deadline_s = float(fields.get("deadline_s", settings.predict_deadline_s))
    if time.time() - float(fields["created_at"]) >= deadline_s:
        if fail_job(context.jobs, JobType.PREDICT, job_id, DeadlineExceeded.after(deadline_s)):
            logger.error("failed an overdue job", extra={"job_id": job_id})
        return
    explain = bool(fields.get("explain"))
    lost: list[int] = []
    if pending is not None:  # else the queue is too long to scan: look next time
        # An explained job stores its result at the end, so all its images are missing until then.
        missing = context.images.missing(job_id)
        if explain:
            lost = [] if job_id in pending.explained_jobs else missing
        else:
            lost = [i for i in missing if (job_id, i) not in pending.images]
    # Watch again first: if this process dies before sending, the next sweep comes back.
    context.predict_checks.check_again(job_id, settings.predict_check_interval_s, resent=len(lost))
    if lost:
        send_predict_messages(app, job_id, lost, explain=explain)
        logger.warning("resent lost messages", extra={"job_id": job_id, "images": len(lost)})
