"""Command lines of every imgq process, shared by the local run and the test fixtures.

Tests start exactly what the README's run command starts, so a green suite means the real
command lines work.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlparse

from imgq.queueing import WorkerKind
from imgq.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``IMGQ_*`` variables that make a child process load the same settings."""
    return {
        f"IMGQ_{name.upper()}": str(value)
        for name, value in settings.model_dump().items()
        if value is not None
    }


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


def _celery(kind: WorkerKind, *args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", kind.app_module, *args]


def _worker_argv(
    settings: Settings, kind: WorkerKind, *, name: str, pool: str, concurrency: int, prefetch: int
) -> list[str]:
    """One Celery worker of one kind consuming its queue; gossip and mingle off (unused here)."""
    return _celery(
        kind,
        "worker",
        "--queues", kind.queue,
        "--pool", pool,
        "--concurrency", str(concurrency),
        "--prefetch-multiplier", str(prefetch),
        "--hostname", f"{name}@%h",
        "--without-gossip", "--without-mingle",
        "--loglevel", settings.log_level,
    )  # fmt: skip


def predict_worker_argv(settings: Settings, name: str = "predict") -> list[str]:
    """A prediction worker: threads pool (no fork after TensorFlow loads), one model per process.

    Prefetch is two batches: one running, one filling, so the next batch is ready when the
    forward pass ends, while the queue keeps the rest visible to an autoscaler.
    """
    return _worker_argv(
        settings,
        WorkerKind.PREDICT,
        name=name,
        pool="threads",
        concurrency=1,
        prefetch=2 * settings.max_batch_size,
    )


def train_worker_argv(settings: Settings, name: str = "train") -> list[str]:
    """A training worker: prefork with one child, which imports TensorFlow after the fork."""
    return _worker_argv(
        settings, WorkerKind.TRAIN, name=name, pool="prefork", concurrency=1, prefetch=1
    )


def webhooks_worker_argv(settings: Settings, name: str = "webhooks") -> list[str]:
    """A webhooks worker: threads (deliveries wait on the network), the scheduler and reaper."""
    return _worker_argv(
        settings, WorkerKind.WEBHOOKS, name=name, pool="threads", concurrency=8, prefetch=1
    )


def worker_argv(settings: Settings, kind: WorkerKind, name: str) -> list[str]:
    """The command line of a worker of ``kind``."""
    builders = {
        WorkerKind.PREDICT: predict_worker_argv,
        WorkerKind.TRAIN: train_worker_argv,
        WorkerKind.WEBHOOKS: webhooks_worker_argv,
    }
    return builders[kind](settings, name)


def flower_argv(settings: Settings) -> list[str]:
    """Flower, Celery's web monitor, for looking at queues and workers (no tasks of its own)."""
    return _celery(
        WorkerKind.WEBHOOKS, "flower", f"--port={settings.flower_port}", "--address=127.0.0.1"
    )
