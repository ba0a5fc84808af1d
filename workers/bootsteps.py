"""Worker start-up steps, added per kind by ``make_worker_app``.

* ``PreloadModels`` (prediction workers): load and warm the default model before the worker
  takes any message. Running this as a bootstep (not lazily in the first task) means a
  prediction worker only answers ``celery inspect ping`` and consumes once it can serve at full
  speed, which is what the readiness probe needs.
* ``Housekeeping`` (webhooks workers): a thread that hands due webhooks to delivery tasks and
  runs the reaper; and one each that sweeps datasets (``workers.dataset_sweep``), checks model
  versions for drift (``workers.drift_check``) and applies rollout policies
  (``workers.rollout``), each on its own interval so a slow run never delays a webhook.

Both read the worker's context from ``worker.app``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import bootsteps
from kombu.exceptions import OperationalError

from imgq.errors import ImgqError
from imgq.queueing import DELIVER_WEBHOOK_TASK, WEBHOOKS_QUEUE
from workers.context import context_of
from workers.dataset_sweep import sweep_datasets
from workers.drift_check import check_drift
from workers.metrics import serve_metrics
from workers.reaper import reap
from workers.rollout import run_policies

logger = logging.getLogger(__name__)


class PreloadModels(bootsteps.StartStopStep):
    """Loads the default model in a prediction worker's own process, then watches for swaps."""

    requires = ("celery.worker.components:Pool",)

    def start(self, worker: Any) -> None:
        """Called once in the worker process before consumption starts."""
        context = context_of(worker.app)
        settings = context.settings
        serve_metrics(settings.metrics_port)
        models = context.models
        default_model = models.ensure_default()
        version = models.serving_version(default_model)
        models.watch(context.redis, settings.model_check_interval_s)
        settings.ready_file.parent.mkdir(parents=True, exist_ok=True)
        settings.ready_file.touch()
        self._ready_file = settings.ready_file
        logger.info("model ready", extra={"model": default_model, "version": version})

    def stop(self, worker: Any) -> None:
        """Withdraw readiness first, so no new traffic is routed here while shutting down."""
        ready_file = getattr(self, "_ready_file", None)
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)


class Housekeeping(bootsteps.StartStopStep):
    """In webhooks workers: a thread that sends due webhooks and runs the reaper.

    Every webhooks worker runs one; claiming due deliveries is atomic in Redis, so several
    never send the same one twice (see ``imgq.webhooks.schedule``), and the reaper's claims are
    atomic too (see ``workers.reaper``). It lives here because a training worker cannot reap
    its own jobs once it is dead.
    """

    requires = ("celery.worker.components:Pool",)
    interval_s = 0.2
    reap_interval_s = 1.0

    def start(self, worker: Any) -> None:
        """Start the housekeeping thread."""
        serve_metrics(context_of(worker.app).settings.metrics_port)
        self._stop = threading.Event()
        threading.Thread(
            target=self._run, args=(worker.app,), name="housekeeping", daemon=True
        ).start()
        context = context_of(worker.app)
        settings = context.settings
        _every(settings.dataset_sweep_interval_s, lambda: sweep_datasets(context), self._stop)
        _every(settings.drift_check_interval_s, lambda: check_drift(context), self._stop)
        _every(settings.rollout_check_interval_s, lambda: run_policies(worker.app), self._stop)

    def stop(self, worker: Any) -> None:
        """Stop; deliveries leased but unsent come back when their lease ends."""
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    def _run(self, app: Any) -> None:
        context = context_of(app)
        next_reap = 0.0
        while not self._stop.wait(self.interval_s):
            try:
                for job_id in context.deliveries.claim_due():
                    app.send_task(DELIVER_WEBHOOK_TASK, args=[job_id], queue=WEBHOOKS_QUEUE)
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + self.reap_interval_s
                    reap(app, context)
            except (redis.RedisError, OSError, OperationalError) as exc:
                logger.warning("housekeeping: %s", exc)


def _every(interval_s: float, work: Callable[[], object], stop: threading.Event) -> None:
    """Run ``work`` now and then every ``interval_s`` in a daemon thread, until ``stop``."""

    def run() -> None:
        while True:
            try:
                work()
            except (redis.RedisError, OSError, ImgqError) as exc:
                logger.warning("housekeeping %s: %s", getattr(work, "__name__", "task"), exc)
            except Exception:
                logger.exception("housekeeping task crashed")
            if stop.wait(interval_s):
                return

    threading.Thread(target=run, daemon=True).start()
