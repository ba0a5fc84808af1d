"""Entry point of predict workers: ``celery -A workers.predict_worker worker -Q predict ...``."""

from __future__ import annotations

from imgq.queueing import WorkerKind
from workers.celery_app import app_from_environment

app = app_from_environment(WorkerKind.PREDICT)
