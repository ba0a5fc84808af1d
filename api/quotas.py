"""Quotas and request rate at the API: every client key is bounded, admins are not.

``admit`` is called by every route that creates a job, after an ``Idempotency-Key`` replay
was ruled out and before the job exists (``imgq.quotas`` has the rules). ``install_rate_limit``
adds a token bucket per client to every authenticated request and the IETF draft's
``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` and ``RateLimit-Policy``
headers to every answer. Refusals are ``429`` with ``Retry-After`` and are counted on
``/metrics`` by client (``imgq_quota_refusals_total``).

Admin keys are operators' and internal tools' (the local run, the console): they are not
bounded, so an operator can always act on a flooded system.
"""

from __future__ import annotations

import math

from flask import Flask, Response, g
from prometheus_client import Counter

from api.auth import current_client
from api.idempotency import release_claim
from api.services import services
from imgq.api_keys import Role
from imgq.errors import QuotaExceeded, RateLimited
from imgq.quotas import JobKind, Quota, Quotas
from imgq.settings import Settings

QUOTA_REFUSALS = Counter(
    "imgq_quota_refusals_total",
    "Requests refused by a client's quota or request rate (429), by client and limit.",
    ["client", "limit"],
)

RETRY_AFTER_S = {JobKind.PREDICT: 1.0, JobKind.EXPLAIN: 2.0, JobKind.LONG: 30.0}
"""How long a refused client is told to wait, by kind of job: about how long one frees."""


def client_quota() -> Quota:
    """The caller's limits: its key's own (``quotas`` in the keys file), else the settings'."""
    settings = services().settings
    own = current_client().quotas
    return Quota(
        jobs=int(own.get("jobs", settings.quota_jobs)),
        queued_images=int(own.get("queued_images", settings.quota_queued_images)),
        queued_image_bytes=int(own.get("queued_image_bytes", settings.quota_queued_image_bytes)),
        long_jobs=int(own.get("long_jobs", settings.quota_long_jobs)),
        explain_jobs=int(own.get("explain_jobs", settings.quota_explain_jobs)),
        upload_bytes=int(own.get("upload_bytes", settings.quota_upload_bytes)),
    )


def _rate(settings: Settings) -> tuple[float, int]:
    """The caller's request rate and burst: its key's own, else the settings'."""
    own = current_client().quotas
    return (
        float(own.get("rate_per_s", settings.quota_rate_per_s)),
        int(own.get("burst", settings.quota_burst)),
    )


def _quotas() -> Quotas:
    svc = services()
    return Quotas(svc.redis, svc.settings.job_ttl_s)


def admit(job_id: str, kind: JobKind, *, images: int = 0, size: int = 0) -> None:
    """Count a job against the caller's quota, or refuse it (``429 quota_exceeded``).

    Raises:
        QuotaExceeded: with the limit passed and when to retry; the request's idempotency
            claim is released, so the retry is a new request.
    """
    caller = current_client()
    if caller.role is Role.ADMIN:
        return
    quota = client_quota()
    refused = _quotas().admit(caller.client, job_id, kind, quota, images=images, size=size)
    if refused is None:
        return
    release_claim()
    QUOTA_REFUSALS.labels(caller.client, refused).inc()
    raise QuotaExceeded.after(
        RETRY_AFTER_S[kind],
        f"Your quota of {refused.replace('_', ' ')} is used up ({getattr(quota, refused)}); "
        "retry when some of your jobs have ended.",
        {"limit": refused, "value": getattr(quota, refused)},
    )


def release(job_id: str) -> None:
    """Give back a job's admission (its submission was undone)."""
    caller = current_client()
    if caller.role is not Role.ADMIN:
        _quotas().release(caller.client, job_id)


def install_rate_limit(app: Flask) -> None:
    """Take a request token per authenticated client request; answer ``RateLimit-*``."""

    @app.before_request
    def _take_token() -> None:
        caller = g.get("api_key")
        if caller is None or caller.role is Role.ADMIN:
            return
        rate, burst = _rate(services().settings)
        bucket = _quotas().take_token(caller.client, rate, burst)
        g.rate_bucket = bucket
        if not bucket.allowed:
            QUOTA_REFUSALS.labels(caller.client, "rate").inc()
            raise RateLimited.after(
                bucket.retry_after_s,
                f"Too many requests: {rate:g} per second, bursts of {burst}.",
                {"rate_per_s": rate, "burst": burst},
            )

    @app.after_request
    def _rate_headers(response: Response) -> Response:
        bucket = g.get("rate_bucket")
        if bucket is None:
            return response
        rate, burst = _rate(services().settings)
        reset = bucket.retry_after_s if not bucket.allowed else (burst - bucket.remaining) / rate
        response.headers["RateLimit-Limit"] = str(burst)
        response.headers["RateLimit-Remaining"] = str(int(bucket.remaining))
        response.headers["RateLimit-Reset"] = str(max(0, math.ceil(reset)))
        response.headers["RateLimit-Policy"] = f"{burst};w={math.ceil(burst / rate)}"
        return response
