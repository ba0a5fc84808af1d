"""What a worker's tasks and bootsteps share: settings and clients, built once per worker.

The worker-side twin of ``api/services.py``: ``make_worker_app`` (``workers.celery_app``) builds
one ``WorkerContext`` and hangs it on the Celery app, so tasks reach it through the app they are
registered on and bootsteps through ``worker.app``; nothing is built at import time and no
module keeps clients in globals. The model cache exists only in prediction workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import redis
from celery import Celery

from imgq.jobs.predict_images import PredictImages
from imgq.jobs.registries import HeartbeatRegistry, PredictChecks
from imgq.jobs.store import JobStore
from imgq.redis_client import redis_client
from imgq.settings import Settings
from imgq.webhooks.schedule import DeliveryStore
from ml.preprocess import ImageLimits

if TYPE_CHECKING:
    from workers.model_cache import ModelCache


@dataclass
class WorkerContext:
    """Settings, Redis and the stores over it; the model cache where models are served."""

    settings: Settings
    redis: redis.Redis
    jobs: JobStore
    images: PredictImages
    heartbeats: HeartbeatRegistry
    predict_checks: PredictChecks
    deliveries: DeliveryStore
    image_limits: ImageLimits
    """Limits every decoded image is held to."""
    model_cache: ModelCache | None = None

    @classmethod
    def build(cls, settings: Settings, *, serves_models: bool) -> WorkerContext:
        """Clients for ``settings``; a model cache only if ``serves_models`` (Redis connects
        lazily, on first use)."""
        client = redis_client(settings.redis_url)
        cache = None
        if serves_models:
            from workers.model_cache import ModelCache

            cache = ModelCache(settings)
        return cls(
            settings=settings,
            redis=client,
            jobs=JobStore(client, settings.job_ttl_s),
            images=PredictImages(client, settings.job_ttl_s),
            heartbeats=HeartbeatRegistry(client),
            predict_checks=PredictChecks(client),
            deliveries=DeliveryStore(client, settings.job_ttl_s, settings.webhook_lease_s),
            image_limits=ImageLimits(
                settings.max_image_bytes,
                settings.max_image_pixels,
                settings.max_decode_bytes,
                settings.max_concurrent_decodes,
            ),
            model_cache=cache,
        )

    @property
    def models(self) -> ModelCache:
        """The model cache of a prediction worker."""
        if self.model_cache is None:
            raise RuntimeError("This worker serves no models (only prediction workers do).")
        return self.model_cache


class WorkerApp(Celery):
    """A Celery app that carries its worker's context."""

    context: WorkerContext


def context_of(app: Celery) -> WorkerContext:
    """The context of a worker app: a task's ``self.app`` or a bootstep's ``worker.app``."""
    return cast("WorkerApp", app).context
