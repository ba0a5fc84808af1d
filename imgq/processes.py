"""Command lines of every imgq process, shared by the local run and the test fixtures.

Tests start exactly what the README's run command starts, so a green suite means the real
command lines work.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlparse

from imgq.queueing import PREDICT_QUEUE, TRAIN_QUEUE, WEBHOOKS_QUEUE
from imgq.settings import Settings


def redis_argv(settings: Settings, data_dir: Path) -> list[str]:
    """``redis-server`` on the host and port of ``redis_url``, with AOF persistence in data_dir."""
    url = urlparse(settings.redis_url)
    return [
        "redis-server",
        "--port",
        str(url.port or 6379),
        "--bind",
        url.hostname or "127.0.0.1",
        "--dir",
        str(data_dir.resolve()),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
    ]


def api_argv(settings: Settings, bind: str | None = None) -> list[str]:
    """Gunicorn serving the Flask app with threaded workers."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "api.wsgi:app",
        "--config",
        "python:api.gunicorn_conf",
        "--bind",
        bind or settings.api_bind,
        "--worker-class",
        "gthread",
        "--workers",
        str(settings.api_workers),
        "--threads",
        str(settings.api_threads),
        "--graceful-timeout",
        "20",
    ]


def predict_worker_argv(settings: Settings, name: str = "predict") -> list[str]:
    """A prediction worker: threads pool (no fork after TensorFlow loads), one model per process.

    Prefetch is two batches: one running, one filling, so the next batch is ready when the
    forward pass ends, while the queue keeps the rest visible to an autoscaler.
    """
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--queues",
        PREDICT_QUEUE,
        "--pool",
        "threads",
        "--concurrency",
        "1",
        "--prefetch-multiplier",
        str(2 * settings.max_batch_size),
        "--hostname",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        settings.log_level,
    ]


def webhooks_worker_argv(settings: Settings, name: str = "webhooks") -> list[str]:
    """A webhooks worker: threads (deliveries wait on the network), and the retry scheduler."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--queues",
        WEBHOOKS_QUEUE,
        "--pool",
        "threads",
        "--concurrency",
        "8",
        "--prefetch-multiplier",
        "1",
        "--hostname",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        settings.log_level,
    ]


def flower_argv(settings: Settings) -> list[str]:
    """Flower, Celery's web monitor, for looking at queues and workers."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "flower",
        f"--port={settings.flower_port}",
        "--address=127.0.0.1",
    ]


def train_worker_argv(settings: Settings, name: str = "train") -> list[str]:
    """A training worker: prefork with one child, which imports TensorFlow after the fork."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--queues",
        TRAIN_QUEUE,
        "--pool",
        "prefork",
        "--concurrency",
        "1",
        "--prefetch-multiplier",
        "1",
        "--hostname",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        settings.log_level,
    ]
