"""Entry point of webhooks workers: ``celery -A workers.webhooks_worker worker -Q webhooks ...``."""

from __future__ import annotations

from imgq.queueing import WorkerKind
from workers.celery_app import app_from_environment

app = app_from_environment(WorkerKind.WEBHOOKS)
