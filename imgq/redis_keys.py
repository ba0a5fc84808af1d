"""Every Redis key and pub/sub channel imgq uses, in one place.

Reading this module tells what imgq keeps in Redis and for how long; every other module asks
it for names instead of spelling them. Per-job keys share the ``imgq:job:<id>`` prefix and
expire with the job record (``IMGQ_JOB_TTL_S``); the sorted sets below are trimmed by the
code that owns them. Queue lists are named after their queues (``imgq.queueing``).
"""

from __future__ import annotations

import hashlib

JOB_PREFIX = "imgq:job:"
"""Prefix of every per-job key; ``imgq:job:<id>`` is the record hash."""


def job_record(job_id: str) -> str:
    """Hash of one job's fields (status, timestamps, parameters, result or error)."""
    return f"{JOB_PREFIX}{job_id}"


def job_images(job_id: str) -> str:
    """Hash ``index -> encoded image bytes`` of a predict job, deleted when the job ends."""
    return f"{JOB_PREFIX}{job_id}:images"


def job_predictions(job_id: str) -> str:
    """Hash ``index -> JSON predictions`` that fills as a predict job's images finish."""
    return f"{JOB_PREFIX}{job_id}:predictions"


def job_artifact(job_id: str, name: str) -> str:
    """A file a job produced (a Grad-CAM heatmap), kept as long as the job."""
    return f"{JOB_PREFIX}{job_id}:artifact:{name}"


def webhook_delivery(job_id: str) -> str:
    """JSON state of a job's webhook delivery (see ``imgq.webhooks.delivery``)."""
    return f"{JOB_PREFIX}{job_id}:webhook"


def webhook_lock(job_id: str) -> str:
    """Held while one delivery attempt of a job's webhook runs."""
    return f"{JOB_PREFIX}{job_id}:webhook-lock"


ALL_JOBS = "imgq:jobs:all"
"""Sorted set of every job id by creation time (what an admin lists)."""


def client_jobs(client: str) -> str:
    """Sorted set of one client's job ids by creation time."""
    return f"imgq:jobs:client:{client}"


HEARTBEATS = "imgq:jobs:heartbeats"
"""Sorted set of running long jobs (fine-tunes, exports), scored by their last heartbeat."""
PREDICT_CHECKS = "imgq:jobs:predict-checks"
"""Sorted set of open predict jobs, scored by when the reaper next looks at them."""
WEBHOOKS_SCHEDULED = "imgq:webhooks:scheduled"
"""Sorted set of job ids whose webhook is due, scored by due time."""
WEBHOOKS_INFLIGHT = "imgq:webhooks:inflight"
"""Sorted set of deliveries handed to a worker, scored by when their lease runs out."""


def idempotency_key(client: str, key: str) -> str:
    """One client's ``Idempotency-Key`` claim (hashed: the key is the client's own text)."""
    return f"imgq:idempotency:{client}:{hashlib.sha256(key.encode()).hexdigest()}"


REDUNDANT_RESULTS = "imgq:stats:redundant-results"
"""Counter of image results computed again (a redelivered message) and discarded."""
RESENT_IMAGES = "imgq:stats:resent-images"
"""Counter of images the reaper sent again because their message was lost."""

JOBS_DONE_CHANNEL = "imgq:jobs:done"
"""Pub/sub channel carrying the id of every job reaching a terminal state (long polls)."""
MODELS_CHANNEL = "imgq:models:activated"
"""Pub/sub channel carrying the name of a model whose active version changed (hot-swap)."""

KOMBU_UNACKED = "unacked"
"""Kombu's hash of delivered, unacknowledged messages (its default ``unacked_key``); read by
the reaper and ``/metrics``, never written by imgq."""


DATASET_SWEEP_LEASE = "imgq:dataset-sweep"
"""Held (``SET NX EX``) by the webhooks worker sweeping datasets, so one sweeps per interval."""


def job_feedback(job_id: str) -> str:
    """Hash ``image index -> true label`` a client sent for a predict job (lives as the job)."""
    return f"{JOB_PREFIX}{job_id}:feedback"


MONITORED_VERSIONS = "imgq:monitor:versions"
"""Set of ``<model id>:<version>`` that have served predictions (see ``imgq.monitoring``)."""


def monitor_window(model: str, version: int) -> str:
    """Capped list of a version's newest predictions, newest first."""
    return f"imgq:monitor:{model}:{version}:window"


def monitor_feedback(model: str, version: int) -> str:
    """Hash ``correct``/``incorrect``: first labels received for a version's predictions."""
    return f"imgq:monitor:{model}:{version}:feedback"


def monitor_report(model: str, version: int) -> str:
    """JSON of the latest drift check of a version (for ``/metrics``)."""
    return f"imgq:monitor:{model}:{version}:report"


def monitor_drifted(model: str, version: int) -> str:
    """Present while a version is drifted: set once per transition into drift."""
    return f"imgq:monitor:{model}:{version}:drifted"


DRIFT_CHECK_LEASE = "imgq:drift-check"
"""Held (``SET NX EX``) by the webhooks worker checking drift, so one checks per interval."""


def webhook_event(event_id: str) -> str:
    """Hash of a model event waiting for delivery (see ``imgq.webhooks.events``)."""
    return f"imgq:webhook-event:{event_id}"


ROLLOUT_MODELS = "imgq:rollout:models"
"""Set of model ids that have a rollout policy (see ``workers.rollout``)."""
ROLLOUT_RUNNING = "imgq:rollout-running"
"""Lock held while a webhooks worker applies rollout policies (no two checks overlap)."""
ROLLOUT_LEASE = "imgq:rollout-check"
"""Held (``SET NX EX``) by the webhooks worker applying rollout policies this interval."""


def rollout_state(model: str) -> str:
    """Hash of a model's rollout in progress: the retrain job it started, a pending decision."""
    return f"imgq:rollout:{model}"
