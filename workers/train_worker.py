"""Entry point of train workers: ``celery -A workers.train_worker worker -Q train ...``."""

from __future__ import annotations

from imgq.queueing import WorkerKind
from workers.celery_app import app_from_environment

app = app_from_environment(WorkerKind.TRAIN)
