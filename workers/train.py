"""The fine-tune task: a job id in, a published (and perhaps activated) model version out.

Training messages are acknowledged when the task *starts* (``acks_late=False``), unlike
predictions. A fine-tune can run for hours, and Redis redelivers any message left unacked
longer than the visibility timeout, so late acks would either start a second copy of a long
job or force a visibility timeout so long that crashed prediction batches wait hours for
redelivery. No half-written version is ever visible, because versions are published by an
atomic rename. A training worker that dies mid-job stops its job's heartbeat, and the reaper
(run by webhooks workers, see ``workers.reaper``) fails the job with ``worker_lost`` after
``IMGQ_TRAIN_HEARTBEAT_TIMEOUT_S``; the active version is untouched. Jobs are not retried
automatically: a fine-tune is expensive and its cause of death (memory, a bad dataset) may
kill the next worker too, so the client decides.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from celery import Task
from celery.signals import worker_process_init

from imgq.errors import TrainingFailed
from imgq.jobs.status import JobType
from imgq.model_events import SYSTEM, ModelEvent, announce_activation, model_event, publish
from imgq.queueing import FINETUNE_TASK
from imgq.webhooks.events import WebhookEvents
from ml.registry import ModelRegistry, split_model_id
from ml.retrain import RETRAIN_PARAMETER
from workers.context import WorkerApp, WorkerContext, context_of
from workers.ingest import UploadRefused, dataset_store, ingest_request, upload_path
from workers.long_jobs import LongJob, claim_long_job, run_watched
from workers.metrics import FINETUNE_SECONDS, serve_metrics
from workers.outcomes import cancel_running_job, succeed_job

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0
"""Progress is written at most this often; cancellation is checked after every batch."""


class RedisHooks:
    """Training hooks that write progress to the job record and read cancel requests."""

    def __init__(self, context: WorkerContext, job_id: str) -> None:
        self.context = context
        self.job_id = job_id
        self._last_write = 0.0
        self._latest: dict[str, Any] = {}

    def report(self, progress: dict[str, Any]) -> bool:
        """Store progress (every epoch, else throttled) and say whether a cancel was requested."""
        self.context.heartbeats.beat(self.job_id)
        now = time.monotonic()
        new_epoch = progress.get("epoch") != self._latest.get("epoch")
        if new_epoch or now - self._last_write >= PROGRESS_INTERVAL_S:
            self._latest, self._last_write = progress, now
            return self.context.jobs.set_progress(self.job_id, progress)
        return self.context.jobs.cancel_requested(self.job_id)


def run_finetune_job(context: WorkerContext, job_id: str) -> None:
    """Run one fine-tune job recorded in Redis under ``job_id``, and end it."""
    job = claim_long_job(context, JobType.FINETUNE, job_id)
    if job is None:
        return
    try:
        archive = upload_path(context, job)
    except UploadRefused:
        return
    started = time.monotonic()
    try:
        ok, result = run_watched(job, lambda: _train(context, job, archive), TrainingFailed())
        if not ok:
            return
        if result is None:
            cancel_running_job(context.jobs, JobType.FINETUNE, job_id)
            return
        model = result["model"]
        owner, name = split_model_id(model)
        _log_publication(context, job.client, job_id, result)
        if succeed_job(
            context.jobs, JobType.FINETUNE, job_id, {**result, "model": name, "owner": owner}
        ):
            FINETUNE_SECONDS.observe(time.monotonic() - started)
            if result["activated"]:
                announce_activation(context.redis, model)
    finally:
        if archive is not None:
            archive.unlink(missing_ok=True)


def _registry(context: WorkerContext) -> ModelRegistry:
    settings = context.settings
    return ModelRegistry(settings.model_store, settings.model_cache_dir)


def _log_publication(
    context: WorkerContext, client: str, job_id: str, result: dict[str, Any]
) -> None:
    """Put the new version, and the gate's activation of it, in the model's event log."""
    model, version, reason = result["model"], result["version"], result["activation_reason"]
    registry = _registry(context)
    details = {"job_id": job_id}
    try:
        registry.record_event(
            model,
            model_event(
                ModelEvent.PUBLISHED, client, version=version, reason=reason, details=details
            ),
        )
        if result["activated"]:
            registry.record_event(
                model, model_event(ModelEvent.ACTIVATED, SYSTEM, version=version, reason=reason)
            )
        if result.get("ended_canary") is not None:
            owner, name = split_model_id(model)
            publish(
                model_event(
                    ModelEvent.CANARY_ENDED,
                    SYSTEM,
                    version=result["ended_canary"],
                    reason=f"version {version} was activated by the gate",
                ),
                record=lambda entry: registry.record_event(model, entry),
                webhooks=WebhookEvents(context.redis, context.settings.job_ttl_s),
                callback_url=registry.model_settings(model).get("callback_url"),
                owner=str(owner),
                model=name,
            )
    except OSError as exc:  # the version is published either way; the log is a record of it
        logger.warning("could not log the publication: %s", exc, extra={"job_id": job_id})


TRAIN_PARAMETERS = frozenset(
    {
        "model",
        "base",
        "image_size",
        "archive",
        "dataset",
        "dataset_version",
        "data_mode",
        "owner",
        "budget_s",
        "teacher",
        RETRAIN_PARAMETER,
    }
)
"""Job parameters that are not ``TrainConfig`` fields."""


def _train(context: WorkerContext, job: LongJob, archive: Path | None) -> dict[str, Any] | None:
    """Train in this (forked) process; TensorFlow is imported here, never in the parent."""
    from ml.backbones import WeightSources
    from ml.finetune import FinetuneRequest, run_finetune
    from ml.train import TrainingCanceled, configure_accelerators

    settings = context.settings
    params = job.params
    configure_accelerators()
    version = params.get("dataset_version")
    request = FinetuneRequest(
        model=params["model"],
        base=params["base"],
        image_size=params["image_size"],
        train_params={k: v for k, v in params.items() if k not in TRAIN_PARAMETERS},
        dataset=params["dataset"],
        dataset_version=None if version is None else int(version),
        ingest=None if archive is None else ingest_request(context, job, archive),
        min_images_per_class=settings.min_images_per_class,
        image_limits=context.image_limits,
        sources=WeightSources(settings.weights_dir, settings.efficientnet_lite_checkpoint),
        activation_margin=settings.activation_margin,
        retrain_of=params.get(RETRAIN_PARAMETER),
        budget_s=params.get("budget_s"),
        teacher=params.get("teacher"),
    )
    settings.upload_dir.mkdir(parents=True, exist_ok=True)
    try:
        return run_finetune(
            request,
            _registry(context),
            dataset_store(context),
            RedisHooks(context, job.job_id),
            settings.upload_dir,
        )
    except TrainingCanceled:
        logger.info("fine-tune canceled", extra={"job_id": job.job_id})
        return None


def register_tasks(app: WorkerApp) -> None:
    """Register ``imgq.train.finetune`` on a training worker's app."""
    settings = app.context.settings

    @worker_process_init.connect(weak=False)
    def serve_child_metrics(**_: Any) -> None:
        """Training runs in the prefork child, so the child serves the metrics it records."""
        serve_metrics(settings.metrics_port)

    @app.task(
        shared=False,  # this app's task only, not every app's in the process
        name=FINETUNE_TASK,
        bind=True,
        acks_late=False,
        soft_time_limit=settings.train_time_limit_s,
        time_limit=settings.train_time_limit_s + 120,
    )
    def finetune(task: Task[Any, None], job_id: str) -> None:
        """One fine-tune job."""
        run_finetune_job(context_of(task.app), job_id)
