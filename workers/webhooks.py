"""Webhook delivery: POST the ended job, signed, to its callback URL; retry while it is down.

One attempt per task. The outcome decides what follows: a 2xx marks the delivery ``delivered``;
a timeout, a connection error, 429 or 5xx schedules the next attempt from
``IMGQ_WEBHOOK_RETRY_SCHEDULE_S`` (``retrying``) until the schedule runs out (``failed``); any
other status fails at once, since repeating a request the receiver rejected will not help.
Every attempt is recorded in the job's ``webhook`` state. Redirects are never followed, and
the connection goes to the address that was checked, never to a second DNS answer.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
import urllib3

from imgq.callback_urls import CallbackTarget, InvalidCallbackUrl, check_callback_url
from imgq.jobs import JobStore
from imgq.keys import KeyRing
from imgq.queueing import DELIVER_WEBHOOK_TASK
from imgq.webhooks import WebhookQueue, retry_delay, sign
from workers.celery_app import app, settings
from workers.metrics import WEBHOOK_ATTEMPTS

logger = logging.getLogger(__name__)

redis_client = redis.Redis.from_url(settings.redis_url)
job_store = JobStore(redis_client, settings.job_ttl_s)
webhook_queue = WebhookQueue(redis_client, settings.job_ttl_s)
USER_AGENT = "imgq-webhooks/1"


def _post(target: CallbackTarget, body: bytes, headers: dict[str, str]) -> int:
    """One POST to the checked address; returns the status code."""
    timeout = urllib3.Timeout(
        connect=settings.webhook_connect_timeout_s, read=settings.webhook_read_timeout_s
    )
    options: dict[str, Any] = {"timeout": timeout, "retries": False, "maxsize": 1}
    pool: urllib3.HTTPConnectionPool
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            target.address,
            target.port,
            server_hostname=target.host,
            assert_hostname=target.host,
            **options,
        )
    else:
        pool = urllib3.HTTPConnectionPool(target.address, target.port, **options)
    with pool:
        host = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
        response = pool.urlopen(
            "POST",
            target.target,
            body=body,
            redirect=False,
            headers={**headers, "Host": host},
            preload_content=True,
        )
        return int(response.status)


def _attempt(job_id: str, state: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Send once; return the outcome (delivered, retry, failed) and the attempt record."""
    document = job_store.get(job_id) or {}
    body = json.dumps(
        {**document, "status": str(document.get("status"))}, default=str, sort_keys=True
    ).encode()
    timestamp = str(int(time.time()))
    secret = (
        KeyRing.load(settings.api_keys, settings.api_keys_file).webhook_secret(state["client"])
        or ""
    )
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Imgq-Event-Id": state["event_id"],
        "Imgq-Timestamp": timestamp,
        "Imgq-Signature": sign(secret, timestamp, body),
    }
    started = time.monotonic()
    record: dict[str, Any] = {"at": time.time()}
    try:
        status = _post(
            check_callback_url(state["url"], settings.webhook_allow_private), body, headers
        )
        record["status_code"] = status
        outcome = (
            "delivered"
            if 200 <= status < 300
            else "retry"
            if status == 429 or status >= 500
            else "failed"
        )
    except InvalidCallbackUrl as exc:
        record["error"], outcome = exc.message, "failed"
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        record["error"], outcome = f"{type(exc).__name__}: {exc}", "retry"
    record["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
    return outcome, record


@app.task(name=DELIVER_WEBHOOK_TASK, acks_late=True)
def deliver_webhook(job_id: str) -> None:
    """Make one delivery attempt for ``job_id`` and schedule what follows."""
    if not webhook_queue.lock(job_id):
        return  # another attempt for this job is running; its outcome decides
    try:
        fields = job_store.fields(job_id)
        if not fields.get("callback_url"):
            return
        state = webhook_queue.state(job_id) or {
            "url": fields["callback_url"],
            "state": "pending",
            "attempts": [],
            "client": fields.get("client", ""),
            "event_id": f"{job_id}.{fields['status']}",
            "next_attempt_at": None,
        }
        if state["state"] in ("delivered", "failed"):
            return
        outcome, record = _attempt(job_id, state)
        state["attempts"].append(record)
        WEBHOOK_ATTEMPTS.labels(outcome).inc()
        attempt_number = len(state["attempts"]) - state.get("round_start", 0)
        delay = retry_delay(settings.webhook_schedule, attempt_number)
        if outcome == "retry" and delay is not None:
            state["state"], state["next_attempt_at"] = "retrying", time.time() + delay
            webhook_queue.schedule(job_id, state["next_attempt_at"])
        else:
            state["state"] = "delivered" if outcome == "delivered" else "failed"
            state["next_attempt_at"] = None
        webhook_queue.save(job_id, state)
        logger.info("webhook attempt", extra={"job_id": job_id, "outcome": outcome, **record})
    finally:
        webhook_queue.finish(job_id)
        webhook_queue.unlock(job_id)
