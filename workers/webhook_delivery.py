"""Webhook delivery: POST the ended job (or a model event), signed, to its callback URL; one
attempt per task.

The attempt's outcome drives the delivery's state machine (``imgq.webhooks.delivery``, which
also holds the retry schedule): a 2xx delivers; a timeout, a connection error, 429 or 5xx
schedules the next attempt until the schedule runs out; any other status fails at once, since
repeating a request the receiver rejected will not help. Redirects are never followed, and the
connection goes to the address that was checked, never to a second DNS answer.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import time
from typing import Any

import urllib3
from celery import Task
from urllib3.connection import HTTPConnection, HTTPSConnection

from imgq.api_keys import KeyRing
from imgq.errors import InvalidCallbackUrl
from imgq.queueing import DELIVER_WEBHOOK_TASK
from imgq.settings import Settings
from imgq.webhooks.callback_urls import CallbackTarget, check_callback_url
from imgq.webhooks.delivery import AttemptOutcome, Delivery
from imgq.webhooks.events import WebhookEvents, is_event
from imgq.webhooks.signing import signature_header
from workers.context import WorkerApp, WorkerContext, context_of
from workers.metrics import WEBHOOK_ATTEMPTS

logger = logging.getLogger(__name__)

USER_AGENT = "imgq-webhooks/1"


def _connection(settings: Settings, target: CallbackTarget) -> HTTPConnection:
    """A connection to the checked address (never a second DNS answer), TLS checked against
    the URL's host name."""
    timeout = max(settings.webhook_connect_timeout_s, settings.webhook_read_timeout_s)
    if target.scheme == "https":
        return HTTPSConnection(
            target.address,
            target.port,
            timeout=timeout,
            server_hostname=target.host,
            assert_hostname=target.host,
        )
    return HTTPConnection(target.address, target.port, timeout=timeout)


def _post(settings: Settings, target: CallbackTarget, body: bytes, headers: dict[str, str]) -> int:
    """One POST to the checked address; returns the status code.

    Only the status line and headers are read, never the body, and a watchdog shuts the
    socket once ``IMGQ_WEBHOOK_ATTEMPT_DEADLINE_S`` has passed: a receiver that streams
    gigabytes costs nothing, and one that trickles a byte every few seconds (each within the
    read timeout) still ends the attempt on time.
    """
    connection = _connection(settings, target)
    host = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"

    def give_up() -> None:
        sock = connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv, unlike close()

    watchdog = threading.Timer(settings.webhook_attempt_deadline_s, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.request(
            "POST",
            target.target,
            body=body,
            headers={**headers, "Host": host},
            preload_content=False,  # the body is never read
        )
        response = connection.getresponse()
        return int(response.status)
    finally:
        watchdog.cancel()
        connection.close()


def _source(context: WorkerContext, delivery_id: str) -> tuple[dict[str, str], bytes]:
    """What a delivery sends: the record that names its URL and client, and the body (the
    ended job, or a model event's document)."""
    if is_event(delivery_id):
        fields = WebhookEvents(context.redis, context.settings.job_ttl_s).fields(delivery_id)
        return fields, fields.get("body", "{}").encode()
    fields = context.jobs.fields(delivery_id)
    document = context.jobs.get(delivery_id) or {}
    body = json.dumps(
        {**document, "status": str(document.get("status"))}, default=str, sort_keys=True
    ).encode()
    return fields, body


def _attempt(
    context: WorkerContext, body: bytes, delivery: Delivery
) -> tuple[AttemptOutcome, dict[str, Any]]:
    """Send once; return the outcome and the attempt's record."""
    settings = context.settings
    timestamp = str(int(time.time()))
    # Read per attempt, so a new, rotated or removed secret applies to the next delivery.
    keys = KeyRing.load(settings.api_keys, settings.api_keys_file)
    secrets = keys.webhook_secrets(delivery.client, time.time())  # during a rotation: new, old
    if not secrets:  # an empty key would sign with nothing anyone could verify
        return AttemptOutcome.FAILED, {
            "at": time.time(),
            "error": f"client {delivery.client!r} has no webhook secret; deliveries are only "
            "sent signed",
        }
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Imgq-Event-Id": delivery.event_id,
        "Imgq-Timestamp": timestamp,
        "Imgq-Signature": signature_header(secrets, timestamp, body),
    }
    started = time.monotonic()
    record: dict[str, Any] = {"at": time.time()}
    try:
        target = check_callback_url(
            delivery.url, settings.webhook_allow_private, settings.webhook_ports
        )
        status = _post(settings, target, body, headers)
        record["status_code"] = status
        outcome = AttemptOutcome.of_status(status)
    except InvalidCallbackUrl as exc:
        record["error"], outcome = exc.message, AttemptOutcome.FAILED
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
        record["error"], outcome = f"{type(exc).__name__}: {exc}", AttemptOutcome.RETRY
    record["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
    return outcome, record


def deliver(context: WorkerContext, job_id: str) -> None:
    """Make one delivery attempt for ``job_id`` and schedule what follows."""
    deliveries = context.deliveries
    if not deliveries.lock(job_id):
        return  # another attempt for this job is running; its outcome decides
    try:
        fields, body = _source(context, job_id)
        if not fields.get("callback_url"):
            return
        delivery = deliveries.load(job_id) or Delivery.for_job(job_id, fields)
        if delivery.ended:
            return
        outcome, record = _attempt(context, body, delivery)
        WEBHOOK_ATTEMPTS.labels(outcome.value).inc()
        due = delivery.record(outcome, record, context.settings.webhook_schedule, time.time())
        if due is not None:
            deliveries.schedule(job_id, due)
        deliveries.save(job_id, delivery)
        logger.info("webhook attempt", extra={"job_id": job_id, "outcome": outcome.value, **record})
    finally:
        deliveries.finish(job_id)
        deliveries.unlock(job_id)


def register_tasks(app: WorkerApp) -> None:
    """Register ``imgq.webhooks.deliver`` on a webhooks worker's app."""

    @app.task(name=DELIVER_WEBHOOK_TASK, bind=True, acks_late=True, shared=False)
    def deliver_webhook(task: Task[Any, None], job_id: str) -> None:
        """One delivery attempt."""
        deliver(context_of(task.app), job_id)
