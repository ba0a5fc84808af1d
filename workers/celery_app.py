"""The worker-side Celery app: shared configuration plus the task modules and bootsteps.

Start a prediction worker with ``celery -A workers.celery_app worker -Q predict --pool threads
--concurrency 1`` and a training worker with ``-Q train --pool prefork --concurrency 1`` (the
README's run command does both). Why these pools:

* TensorFlow deadlocks when a process forks after its runtime started. The prediction worker
  uses the ``threads`` pool, so nothing forks at all: the model is loaded in the worker process
  by a bootstep before it consumes, and batches run on one pool thread while the consumer
  keeps receiving the next batch's messages.
* The training worker uses ``prefork``: the parent never imports TensorFlow (the task imports
  ``ml.train`` in its body), so each child loads it after the fork, and training gets the soft
  time limits and process isolation that only prefork gives.
"""

from __future__ import annotations

import os

from imgq.logs import configure_logging
from imgq.queueing import make_celery
from imgq.settings import load_settings
from workers.bootsteps import PreloadModels, WebhookScheduler

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) is not worth a line per worker.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
settings = load_settings()
configure_logging(settings.log_level)
app = make_celery(
    settings, include=["workers.predict", "workers.explain", "workers.train", "workers.webhooks"]
)
app.steps["worker"].add(PreloadModels)
app.steps["worker"].add(WebhookScheduler)
