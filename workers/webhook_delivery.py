"""Webhook delivery: POST the ended job (or a model event), signed, to its callback URL; one
attempt per task.

Each attempt is signed twice: ``Imgq-Signature`` (``imgq.webhooks.signing``) and the Standard
Webhooks headers (``imgq.webhooks.standard``) when the client's secret is in the spec's form.
The attempt's outcome drives the delivery's state machine (``imgq.webhooks.delivery``, which
also holds the retry schedule): a 2xx delivers; a timeout, a connection error, 429 or 5xx
schedules the next attempt until the schedule runs out (later, if a 429 or 503 says
``Retry-After``); 410 disables the callback (for a model event, the model's ``callback_url``
too); any other status fails at once, since repeating a request the receiver rejected will not
help. Redirects are never followed, and the connection goes to the address that was checked,
never to a second DNS answer.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import time
from typing import Any, NamedTuple

import urllib3
from celery import Task
from urllib3.connection import HTTPConnection, HTTPSConnection

from imgq.api_keys import KeyRing
from imgq.errors import ImgqError, InvalidCallbackUrl
from imgq.model_events import SYSTEM, ModelEvent, model_event
from imgq.queueing import DELIVER_WEBHOOK_TASK
from imgq.settings import Settings
from imgq.webhooks.callback_urls import CallbackTarget, check_callback_url
from imgq.webhooks.delivery import (
    RETRY_AFTER_STATUSES,
    AttemptOutcome,
    Delivery,
    parse_retry_after,
)
from imgq.webhooks.events import WebhookEvents, is_event
from imgq.webhooks.signing import signature_header
from imgq.webhooks.standard import standard_headers
from ml.registry import ModelRegistry, model_id
from workers.context import WorkerApp, WorkerContext, context_of
from workers.metrics import WEBHOOK_ATTEMPTS

logger = logging.getLogger(__name__)

USER_AGENT = "imgq-webhooks/1"


MODEL_GONE_NOTE = "the model's callback_url was removed (PATCH /models/<name> sets it again)"
"""Added to ``disabled_reason`` when a 410 for a model event removed the model's callback."""


class Answer(NamedTuple):
    """What a delivery reads of the receiver's response: its status and ``Retry-After``."""

    status: int
    retry_after: str | None = None


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


def _post(
    settings: Settings, target: CallbackTarget, body: bytes, headers: dict[str, str]
) -> Answer:
    """One POST to the checked address; returns the status code and ``Retry-After``.

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
        return Answer(int(response.status), response.headers.get("Retry-After"))
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


class Attempt(NamedTuple):
    """One attempt: its outcome, its record, and the ``Retry-After`` it was answered with."""

    outcome: AttemptOutcome
    record: dict[str, Any]
    retry_after_s: float | None = None


def _signed_headers(
    context: WorkerContext, body: bytes, delivery: Delivery
) -> tuple[dict[str, str], dict[str, Any]] | None:
    """The headers of one attempt, both signatures made now, and what the attempt record says
    of the Standard Webhooks ones; None when the client has no secret."""
    settings = context.settings
    timestamp = str(int(time.time()))
    # Read per attempt, so a new, rotated or removed secret applies to the next delivery.
    keys = KeyRing.load(settings.api_keys, settings.api_keys_file)
    secrets = keys.webhook_secrets(delivery.client, time.time())  # during a rotation: new, old
    if not secrets:  # an empty key would sign with nothing anyone could verify
        return None
    standard = standard_headers(secrets, delivery.webhook_id, timestamp, body)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Imgq-Event-Id": delivery.event_id,
        "Imgq-Timestamp": timestamp,
        "Imgq-Signature": signature_header(secrets, timestamp, body),
        **standard.headers,
    }
    return headers, {"standard_webhooks": standard.record()}


def _attempt(context: WorkerContext, body: bytes, delivery: Delivery) -> Attempt:
    """Send once; return the outcome, the attempt's record and any ``Retry-After``."""
    settings = context.settings
    signed = _signed_headers(context, body, delivery)
    if signed is None:
        return Attempt(
            AttemptOutcome.FAILED,
            {
                "at": time.time(),
                "error": f"client {delivery.client!r} has no webhook secret; deliveries are "
                "only sent signed",
            },
        )
    headers, signing = signed
    started = time.monotonic()
    record: dict[str, Any] = {"at": time.time()}
    retry_after_s = None
    try:
        target = check_callback_url(
            delivery.url, settings.webhook_allow_private, settings.webhook_ports
        )
        answer = _post(settings, target, body, headers)
        record["status_code"] = answer.status
        outcome = AttemptOutcome.of_status(answer.status)
        if answer.status in RETRY_AFTER_STATUSES:
            retry_after_s = parse_retry_after(answer.retry_after, time.time())
            if retry_after_s is not None:
                record["retry_after_s"] = retry_after_s
    except InvalidCallbackUrl as exc:
        record["error"], outcome = exc.message, AttemptOutcome.FAILED
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
        record["error"], outcome = f"{type(exc).__name__}: {exc}", AttemptOutcome.RETRY
    record["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
    return Attempt(outcome, {**record, **signing}, retry_after_s)


def _disable_model_callback(
    context: WorkerContext, fields: dict[str, str], delivery: Delivery
) -> None:
    """After a 410 for a model event, remove the model's ``callback_url`` if it is still the
    delivery's URL, say so in the model's event log and in the delivery's ``disabled_reason``.

    A model whose owner set another URL meanwhile keeps it: that one is not the URL that is
    gone. A store that cannot be written is logged and leaves the delivery disabled anyway.
    """
    document = json.loads(fields.get("body") or "{}")
    name, owner = document.get("model"), document.get("owner")
    if not isinstance(name, str):
        return
    model = model_id(str(owner), name) if owner else name
    registry = ModelRegistry(context.settings.model_store, context.settings.model_cache_dir)
    try:
        if registry.model_settings(model).get("callback_url") != delivery.url:
            return
        registry.update_model_settings(model, {"callback_url": None})
        registry.record_event(
            model,
            model_event(
                ModelEvent.SETTINGS_CHANGED,
                SYSTEM,
                reason="the callback URL answered 410 Gone",
                details={"callback_url": None, "event_id": fields.get("id")},
            ),
        )
    except (OSError, ImgqError):
        logger.exception("cannot remove the gone callback URL of model %s", model)
        return
    delivery.disabled_reason = f"{delivery.disabled_reason}; {MODEL_GONE_NOTE}"


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
        attempt = _attempt(context, body, delivery)
        WEBHOOK_ATTEMPTS.labels(attempt.outcome.value).inc()
        schedule = context.settings.webhook_schedule
        due = delivery.record(
            attempt.outcome, attempt.record, schedule, time.time(), attempt.retry_after_s
        )
        if due is not None:
            deliveries.schedule(job_id, due)
        if attempt.outcome is AttemptOutcome.GONE and is_event(job_id):
            _disable_model_callback(context, fields, delivery)
        deliveries.save(job_id, delivery)
        logger.info(
            "webhook attempt",
            extra={"job_id": job_id, "outcome": attempt.outcome.value, **attempt.record},
        )
    finally:
        deliveries.finish(job_id)
        deliveries.unlock(job_id)


def register_tasks(app: WorkerApp) -> None:
    """Register ``imgq.webhooks.deliver`` on a webhooks worker's app."""

    @app.task(name=DELIVER_WEBHOOK_TASK, bind=True, acks_late=True, shared=False)
    def deliver_webhook(task: Task[Any, None], job_id: str) -> None:
        """One delivery attempt."""
        deliver(context_of(task.app), job_id)
