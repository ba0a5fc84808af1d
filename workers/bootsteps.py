"""Worker start-up: load and warm the default model before the worker takes any message.

Running this as a bootstep (not lazily in the first task) means a prediction worker only
answers ``celery inspect ping`` and consumes once it can serve at full speed, which is what the
readiness probe needs. Workers that do not consume the predict queue (training, webhooks)
skip it, so their prefork parent never imports TensorFlow.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from celery import bootsteps
from kombu.exceptions import OperationalError

from imgq.queueing import DELIVER_WEBHOOK_TASK, PREDICT_QUEUE, WEBHOOKS_QUEUE
from workers.metrics import serve_metrics

logger = logging.getLogger(__name__)


class PreloadModels(bootsteps.StartStopStep):
    """Loads the default model in a prediction worker's own process."""

    requires = ("celery.worker.components:Pool",)

    def start(self, worker: Any) -> None:
        """Called once in the worker process before consumption starts."""
        if PREDICT_QUEUE not in worker.app.amqp.queues.consume_from:
            return
        from workers.celery_app import settings
        from workers.predict import model_cache

        serve_metrics(settings.metrics_port)
        model_cache.ensure_default()
        version = model_cache.serving_version(settings.default_model)
        model_cache.watch(redis.Redis.from_url(settings.redis_url), settings.model_check_interval_s)
        settings.ready_file.parent.mkdir(parents=True, exist_ok=True)
        settings.ready_file.touch()
        self._ready_file = settings.ready_file
        logger.info("model ready", extra={"model": settings.default_model, "version": version})

    def stop(self, worker: Any) -> None:
        """Withdraw readiness first, so no new traffic is routed here while shutting down."""
        ready_file = getattr(self, "_ready_file", None)
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)


class WebhookScheduler(bootsteps.StartStopStep):
    """In webhooks workers: a housekeeping thread that sends due webhooks and runs the reaper.

    Every webhooks worker runs one; claiming due deliveries is atomic in Redis, so several
    never send the same one twice (see ``imgq.webhooks``), and failing a job whose heartbeat
    stopped is idempotent (see ``JobStore.reap``). It lives here because a training worker
    cannot reap its own jobs once it is dead.
    """

    requires = ("celery.worker.components:Pool",)
    interval_s = 0.2
    reap_interval_s = 1.0

    def start(self, worker: Any) -> None:
        """Start the scheduler thread if this worker consumes the webhooks queue."""
        if WEBHOOKS_QUEUE not in worker.app.amqp.queues.consume_from:
            return
        from workers.celery_app import settings

        serve_metrics(settings.metrics_port)
        self._stop = threading.Event()
        threading.Thread(
            target=self._run, args=(worker.app,), name="webhook-scheduler", daemon=True
        ).start()

    def stop(self, worker: Any) -> None:
        """Stop scheduling; deliveries leased but unsent come back when their lease ends."""
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    def _run(self, app: Any) -> None:
        from workers.celery_app import settings
        from workers.reaper import reap
        from workers.webhooks import job_store, redis_client, webhook_queue

        next_reap = 0.0
        while not self._stop.wait(self.interval_s):
            try:
                for job_id in webhook_queue.claim_due():
                    app.send_task(DELIVER_WEBHOOK_TASK, args=[job_id], queue=WEBHOOKS_QUEUE)
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + self.reap_interval_s
                    reap(app, job_store, redis_client, settings)
            except (redis.RedisError, OSError, OperationalError) as exc:
                logger.warning("housekeeping: %s", exc)
