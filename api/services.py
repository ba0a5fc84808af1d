"""What the views need from the outside world, built once per app and kept in ``app.extensions``."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app
from redis import Redis

from api.waiters import JobWaiters
from imgq.jobs.idempotency import IdempotencyKeys
from imgq.jobs.store import JobStore
from imgq.settings import Settings
from imgq.webhooks.schedule import DeliveryStore
from ml.dataset_store import DatasetStore
from ml.registry import ModelRegistry


@dataclass(frozen=True)
class Services:
    """Settings and clients shared by every request of one app."""

    settings: Settings
    redis: Redis
    broker: Redis
    jobs: JobStore
    registry: ModelRegistry
    datasets: DatasetStore
    celery: Celery
    waiters: JobWaiters
    idempotency: IdempotencyKeys
    deliveries: DeliveryStore


def services() -> Services:
    """The current app's services."""
    found: Services = current_app.extensions["imgq"]
    return found
