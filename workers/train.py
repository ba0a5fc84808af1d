"""The fine-tune task: a job id in, a published (and perhaps activated) model version out.

Training messages are acknowledged when the task *starts* (``acks_late=False``), unlike
predictions. A fine-tune can run for hours, and Redis redelivers any message left unacked
longer than the visibility timeout, so late acks would either start a second copy of a long
job or force a visibility timeout so long that crashed prediction batches wait hours for
redelivery. No half-written version is ever visible, because versions are published by an
atomic rename. A training worker that dies mid-job stops its job's heartbeat, and the reaper
(run by webhooks workers, see ``workers.bootsteps``) fails the job with ``worker_lost`` after
``IMGQ_TRAIN_HEARTBEAT_TIMEOUT_S``; the active version is untouched. Jobs are not retried
automatically: a fine-tune is expensive and its cause of death (memory, a bad dataset) may
kill the next worker too, so the client decides.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init

from imgq.errors import ImgqError
from imgq.jobs import JobStore
from imgq.model_events import announce_activation
from imgq.queueing import EXPORT_TASK, FINETUNE_TASK
from workers.celery_app import app, settings
from workers.metrics import FINETUNE_SECONDS, JOBS_FINISHED, serve_metrics

logger = logging.getLogger(__name__)

_redis = redis.Redis.from_url(settings.redis_url)
job_store = JobStore(_redis, settings.job_ttl_s)

PROGRESS_INTERVAL_S = 1.0
"""Progress is written at most this often; cancellation is checked after every batch."""


class RedisHooks:
    """Training hooks that write progress to the job record and read cancel requests."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._last_write = 0.0
        self._latest: dict[str, Any] = {}

    def report(self, progress: dict[str, Any]) -> bool:
        """Store progress (every epoch, else throttled) and say whether a cancel was requested."""
        now = time.monotonic()
        new_epoch = progress.get("epoch") != self._latest.get("epoch")
        if new_epoch or now - self._last_write >= PROGRESS_INTERVAL_S:
            self._latest, self._last_write = progress, now
            return job_store.set_progress(self.job_id, progress)
        return job_store.beat(self.job_id)


@worker_process_init.connect
def _serve_child_metrics(**_: Any) -> None:
    """Training runs in the prefork child, so the child serves the metrics it records."""
    serve_metrics(settings.metrics_port)


@contextmanager
def heartbeat(job_id: str) -> Iterator[None]:
    """Beat for ``job_id`` from a side thread while the block runs.

    A long job is watched by the reaper, which fails it as ``worker_lost`` once the beats stop:
    only a dead (or frozen) worker process stops them, not a long phase without callbacks.
    """
    job_store.watch(job_id)
    stop = threading.Event()
    interval = max(1.0, settings.train_heartbeat_timeout_s / 5)

    def beat() -> None:
        while not stop.wait(interval):
            try:
                job_store.beat(job_id)
            except redis.RedisError as exc:
                logger.warning("heartbeat failed: %s", exc, extra={"job_id": job_id})

    threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True).start()
    try:
        yield
    finally:
        stop.set()


def _fail(job_id: str, code: str, message: str) -> None:
    if job_store.fail(job_id, {"code": code, "message": message}):
        JOBS_FINISHED.labels("finetune", "failed", code).inc()


@app.task(
    name=FINETUNE_TASK,
    acks_late=False,
    soft_time_limit=settings.train_time_limit_s,
    time_limit=settings.train_time_limit_s + 120,
)
def finetune(job_id: str) -> None:
    """Run one fine-tune job recorded in Redis under ``job_id``."""
    fields = job_store.fields(job_id)
    if not fields or not job_store.mark_running([job_id])[0]:
        logger.info("job gone or not queued; skipping", extra={"job_id": job_id})
        return
    params = json.loads(fields["params"])
    archive = Path(params.pop("archive"))
    started = time.monotonic()
    try:
        with heartbeat(job_id):
            result = _run(job_id, params, archive)
    except SoftTimeLimitExceeded:
        _fail(job_id, "time_limit", f"Training ran past {settings.train_time_limit_s} s.")
    except ImgqError as exc:
        if job_store.fail(job_id, exc.to_dict()):
            JOBS_FINISHED.labels("finetune", "failed", exc.code).inc()
    except Exception:
        logger.exception("fine-tune crashed", extra={"job_id": job_id})
        _fail(job_id, "training_failed", "Training failed unexpectedly; see the worker logs.")
    else:
        if result is None:
            job_store.mark_canceled(job_id)
            JOBS_FINISHED.labels("finetune", "canceled", "").inc()
        elif job_store.succeed(job_id, result):
            JOBS_FINISHED.labels("finetune", "succeeded", "").inc()
            FINETUNE_SECONDS.observe(time.monotonic() - started)
            if result["activated"]:
                announce_activation(_redis, result["model"])
    finally:
        archive.unlink(missing_ok=True)


def _run(job_id: str, params: dict[str, Any], archive: Path) -> dict[str, Any] | None:
    """Train in this (forked) process; TensorFlow is imported here, never in the parent."""
    from ml.archive import ArchiveLimits
    from ml.backbones import WeightSources
    from ml.finetune import FinetuneRequest, run_finetune
    from ml.preprocess import ImageLimits
    from ml.registry import ModelRegistry
    from ml.train import TrainConfig, TrainingCanceled, configure_accelerators

    configure_accelerators()
    request = FinetuneRequest(
        model=params.pop("model"),
        base=params.pop("base"),
        image_size=params.pop("image_size"),
        config=TrainConfig(**params),
        archive=archive,
        min_images_per_class=settings.min_images_per_class,
        archive_limits=ArchiveLimits(
            settings.max_dataset_entries,
            settings.max_dataset_unpacked_bytes,
            settings.max_dataset_ratio,
        ),
        image_limits=ImageLimits(settings.max_image_bytes, settings.max_image_pixels),
        sources=WeightSources(settings.weights_dir, settings.efficientnet_lite_checkpoint),
    )
    settings.upload_dir.mkdir(parents=True, exist_ok=True)
    try:
        return run_finetune(
            request,
            ModelRegistry(settings.model_store, settings.model_cache_dir),
            RedisHooks(job_id),
            settings.upload_dir,
        )
    except TrainingCanceled:
        logger.info("fine-tune canceled", extra={"job_id": job_id})
        return None


@app.task(name=EXPORT_TASK, acks_late=False, soft_time_limit=settings.train_time_limit_s)
def export(job_id: str) -> None:
    """Produce one export of a model version and check it (see ``ml.export``)."""
    fields = job_store.fields(job_id)
    if not fields or not job_store.mark_running([job_id])[0]:
        return
    params = json.loads(fields["params"])
    try:
        with heartbeat(job_id):
            report = _export(params["model"], int(params["version"]), params["format"])
    except ImgqError as exc:
        job_store.fail(job_id, exc.to_dict())
    except Exception:
        logger.exception("export crashed", extra={"job_id": job_id})
        _fail(job_id, "export_failed", "The export failed unexpectedly; see the worker logs.")
    else:
        job_store.succeed(
            job_id, {"model": params["model"], "version": int(params["version"]), **report}
        )


def _export(model: str, version: int, fmt: str) -> dict[str, Any]:
    import tempfile

    import keras

    from ml.export import export_version
    from ml.registry import ModelRegistry

    registry = ModelRegistry(settings.model_store, settings.model_cache_dir)
    meta = registry.get(model, version)
    if meta.kind != "trained":
        raise ExportNotSupported(f"{model} v{version} is built in; only trained versions export.")
    folder = registry.local_version_dir(model, version)
    keras_model = keras.saving.load_model(folder / "model.keras", compile=False)
    with tempfile.TemporaryDirectory() as scratch:
        report = export_version(
            keras_model,
            list(meta.labels),
            fmt,
            folder,
            Path(scratch),
            margin=settings.export_accuracy_margin,
        ).to_dict()
        registry.save_export(model, version, Path(scratch) / report["file_name"], report)
    return report


class ExportNotSupported(ImgqError):
    """Built-in versions have no trained files or test split to export and check."""

    code = "export_not_supported"
    status = 400
