"""The worker-side Celery app factory: one kind of worker, its tasks, its bootsteps, its context.

``make_worker_app(settings, kind)`` builds the app a worker runs; ``workers/<kind>_worker.py``
calls it for ``celery -A workers.<kind>_worker worker -Q <kind> ...`` (the README's run command
starts one of each). Each kind imports only its own task modules, so a webhooks worker never
loads a model cache, and the training worker's parent never imports TensorFlow. Why these
pools:

* TensorFlow deadlocks when a process forks after its runtime started. The prediction worker
  uses the ``threads`` pool, so nothing forks at all: the model is loaded in the worker process
  by a bootstep before it consumes, and batches run on one pool thread while the consumer
  keeps receiving the next batch's messages.
* The training worker uses ``prefork``: the parent never imports TensorFlow (the task imports
  ``ml.train`` in its body), so each child loads it after the fork, and training gets the soft
  time limits and process isolation that only prefork gives.
"""

from __future__ import annotations

import importlib
import os

from imgq.logs import configure_logging
from imgq.queueing import WorkerKind, celery_config
from imgq.settings import Settings, load_settings
from workers.bootsteps import Housekeeping, PreloadModels
from workers.context import WorkerApp, WorkerContext

TASK_MODULES = {
    WorkerKind.PREDICT: ("workers.predict", "workers.explain"),
    WorkerKind.TRAIN: ("workers.train", "workers.export", "workers.ingest"),
    WorkerKind.WEBHOOKS: ("workers.webhook_delivery",),
}
"""The modules whose ``register_tasks(app)`` each kind of worker calls."""


def make_worker_app(settings: Settings, kind: WorkerKind) -> WorkerApp:
    """Build the Celery app of a worker of ``kind``: shared configuration, that kind's tasks
    and bootsteps, and its ``WorkerContext`` as ``app.context``."""
    # TensorFlow's C++ start-up chatter (oneDNN, CPU features) is not worth a line per worker.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    app = WorkerApp("imgq")
    app.conf.update(celery_config(settings))
    app.context = WorkerContext.build(settings, serves_models=kind is WorkerKind.PREDICT)
    for module in TASK_MODULES[kind]:
        importlib.import_module(module).register_tasks(app)
    if kind is WorkerKind.PREDICT:
        app.steps["worker"].add(PreloadModels)
    if kind is WorkerKind.WEBHOOKS:
        app.steps["worker"].add(Housekeeping)
    return app


def app_from_environment(kind: WorkerKind) -> WorkerApp:
    """The app of a ``celery -A workers.<kind>_worker`` process: settings from ``IMGQ_*``.

    Like ``api/wsgi.py`` for gunicorn, the entry modules are the only place a worker reads the
    environment; everything else takes settings from the app's context.
    """
    settings = load_settings()
    configure_logging(settings.log_level)
    return make_worker_app(settings, kind)
