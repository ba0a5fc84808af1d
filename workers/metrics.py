"""Prometheus series of a worker process, served on ``IMGQ_METRICS_PORT``.

Batch sizes follow Triton's convention: the histogram's ``_sum`` is the inference count (images)
and its ``_count`` the execution count (forward passes), so ``_sum / _count`` is the mean batch.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from ml.registry import split_model_id

logger = logging.getLogger(__name__)

BATCH_SIZE = Histogram(
    "imgq_inference_batch_size",
    "Images per forward pass.",
    ["owner", "model"],
    buckets=(1, 2, 4, 8, 16, 24, 32, 48, 64, 128),
)
FORWARD_SECONDS = Histogram(
    "imgq_inference_forward_seconds",
    "Duration of one forward pass (padded to its bucket size).",
    ["owner", "model"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
DECODE_SECONDS = Histogram(
    "imgq_inference_decode_seconds",
    "Time to decode and resize one batch's images.",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1),
)
JOBS_FINISHED = Counter(
    "imgq_worker_jobs_finished_total",
    "Jobs this worker brought to a terminal state.",
    ["type", "status", "code"],
)
JOB_LATENCY = Histogram(
    "imgq_job_latency_seconds",
    "Submit to result stored, for jobs this worker completed.",
    ["type"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
MODEL_LOAD_FAILURES = Counter(
    "imgq_worker_model_load_failures_total",
    "Activated versions this worker could not load (it kept serving the previous one).",
    ["owner", "model"],
)
FINETUNE_SECONDS = Histogram(
    "imgq_finetune_duration_seconds",
    "Wall time of successful fine-tune jobs.",
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
)
WEBHOOK_ATTEMPTS = Counter(
    "imgq_webhook_attempts_total",
    "Webhook delivery attempts by outcome (delivered, retry, failed, gone).",
    ["outcome"],
)
ACTIVE_VERSION = Gauge(
    "imgq_worker_model_version",
    "Version of each model this worker has loaded and serves as active.",
    ["owner", "model"],
)


def model_labels(model: str) -> tuple[str, str]:
    """The ``owner`` and ``model`` labels of a model id (``@alice/pets``: alice, pets)."""
    owner, name = split_model_id(model)
    return owner or "", name


def serve_metrics(port: int) -> None:
    """Expose the registry over HTTP; port 0 turns it off."""
    if port:
        start_http_server(port)
        logger.info("metrics on :%d", port)
